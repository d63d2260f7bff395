//! Rollouts, each kept as its document (`domain::rollouts::Rollout`).

use super::{json_col, Conn};
use crate::domain::rollouts::{Rollout, RolloutState};
use crate::domain::{OrgId, RolloutId};

fn state_word(s: RolloutState) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_owned)).expect("a state is a word")
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<Rollout, sqlx::Error> {
    json_col(r, "document")
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.rollouts.insert", skip_all)]
pub async fn insert(conn: &mut Conn, r: &Rollout) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO rollouts (id, org_id, state, document, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(r.id.to_string())
        .bind(r.org_id.to_string())
        .bind(state_word(r.state))
        .bind(serde_json::to_string(r).expect("a rollout always serializes"))
        .bind(r.created_at.timestamp_millis())
        .bind(r.updated_at.timestamp_millis())
        .execute(conn)
        .await?;
    Ok(())
}

/// Saves `r` unless it changed since it was read (its `updated_at` then was `read`): returns
/// whether it was saved.
#[tracing::instrument(target = "meshfleet_traces", name = "store.rollouts.save", skip_all)]
pub async fn save(conn: &mut Conn, r: &Rollout, read: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE rollouts SET state = $3, document = $4, updated_at = $5 WHERE org_id = $1 AND id = $2 AND updated_at = $6")
        .bind(r.org_id.to_string())
        .bind(r.id.to_string())
        .bind(state_word(r.state))
        .bind(serde_json::to_string(r).expect("a rollout always serializes"))
        .bind(r.updated_at.timestamp_millis())
        .bind(read)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.rollouts.get", skip_all)]
pub async fn get(conn: &mut Conn, org: OrgId, id: RolloutId) -> Result<Option<Rollout>, sqlx::Error> {
    super::one_of_org(conn, "rollouts", "document", org, id, from_row).await
}

/// Newest first.
#[tracing::instrument(target = "meshfleet_traces", name = "store.rollouts.list", skip_all)]
pub async fn list(conn: &mut Conn, org: OrgId, limit: u32) -> Result<Vec<Rollout>, sqlx::Error> {
    let rows =
        sqlx::query(&format!("SELECT document FROM rollouts WHERE org_id = $1 ORDER BY id DESC LIMIT {limit}")).bind(org.to_string()).fetch_all(conn).await?;
    rows.iter().map(from_row).collect()
}

/// Every rollout of every organization that is running or paused (a paused one may still be
/// rolling a cluster back), for the job.
#[tracing::instrument(target = "meshfleet_traces", name = "store.rollouts.unfinished", skip_all)]
pub async fn unfinished(conn: &mut Conn) -> Result<Vec<Rollout>, sqlx::Error> {
    let rows = sqlx::query("SELECT document FROM rollouts WHERE state IN ('running', 'paused') ORDER BY id").fetch_all(conn).await?;
    rows.iter().map(from_row).collect()
}

/// The organization's rollouts that are running or paused.
#[tracing::instrument(target = "meshfleet_traces", name = "store.rollouts.open", skip_all)]
pub async fn open(conn: &mut Conn, org: OrgId) -> Result<Vec<Rollout>, sqlx::Error> {
    let rows = sqlx::query("SELECT document FROM rollouts WHERE org_id = $1 AND state IN ('running', 'paused') ORDER BY id")
        .bind(org.to_string())
        .fetch_all(conn)
        .await?;
    rows.iter().map(from_row).collect()
}
