//! Upgrade policies of an organization, each kept as the spec it was written as.

use sqlx::Row;

use super::{json_col, parse_col, Conn};
use crate::domain::upgrade_policies::UpgradePolicy;
use crate::domain::{OrgId, UpgradePolicyId};

const COLUMNS: &str = "id, org_id, position, spec, created_at, updated_at";

fn from_row(r: &sqlx::any::AnyRow) -> Result<UpgradePolicy, sqlx::Error> {
    let id = parse_col(&r.try_get::<String, _>("id")?, "upgrade_policies.id")?;
    let org = parse_col(&r.try_get::<String, _>("org_id")?, "upgrade_policies.org_id")?;
    UpgradePolicy::new(id, org, json_col(r, "spec")?, r.try_get("created_at")?, r.try_get("updated_at")?)
        .map_err(|e| sqlx::Error::Decode(format!("bad value in column upgrade_policies.spec: {e:?}").into()))
}

/// Inserts the policy, or replaces the one with its id.
#[tracing::instrument(target = "meshfleet_traces", name = "store.upgrade_policies.upsert", skip_all)]
pub async fn upsert(conn: &mut Conn, p: &UpgradePolicy) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO upgrade_policies ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO UPDATE SET position = $3, spec = $4, updated_at = $6 WHERE upgrade_policies.org_id = $2"
    ))
    .bind(p.id.to_string())
    .bind(p.org_id.to_string())
    .bind(p.spec.position)
    .bind(serde_json::to_string(&p.spec).expect("specs always serialize"))
    .bind(p.created_at)
    .bind(p.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// In the order they are tried.
#[tracing::instrument(target = "meshfleet_traces", name = "store.upgrade_policies.list", skip_all)]
pub async fn list(conn: &mut Conn, org: OrgId) -> Result<Vec<UpgradePolicy>, sqlx::Error> {
    let rows =
        sqlx::query(&format!("SELECT {COLUMNS} FROM upgrade_policies WHERE org_id = $1 ORDER BY position, id")).bind(org.to_string()).fetch_all(conn).await?;
    rows.iter().map(from_row).collect()
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.upgrade_policies.get", skip_all)]
pub async fn get(conn: &mut Conn, org: OrgId, id: UpgradePolicyId) -> Result<Option<UpgradePolicy>, sqlx::Error> {
    super::one_of_org(conn, "upgrade_policies", COLUMNS, org, id, from_row).await
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.upgrade_policies.delete", skip_all)]
pub async fn delete(conn: &mut Conn, org: OrgId, id: UpgradePolicyId) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM upgrade_policies WHERE org_id = $1 AND id = $2").bind(org.to_string()).bind(id.to_string()).execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.upgrade_policies.count", skip_all)]
pub async fn count(conn: &mut Conn, org: OrgId) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT COUNT(*) AS n FROM upgrade_policies WHERE org_id = $1").bind(org.to_string()).fetch_one(conn).await?.try_get("n")
}

/// The organizations with at least one automatic policy, for the proposals job. The spec is
/// stored as serde writes it (compact), so the word is found as written; the job checks each
/// policy again once parsed.
#[tracing::instrument(target = "meshfleet_traces", name = "store.upgrade_policies.orgs_with_automatic", skip_all)]
pub async fn orgs_with_automatic(conn: &mut Conn) -> Result<Vec<OrgId>, sqlx::Error> {
    let rows = sqlx::query("SELECT DISTINCT org_id FROM upgrade_policies WHERE spec LIKE '%\"mode\":\"automatic\"%' ORDER BY org_id").fetch_all(conn).await?;
    rows.iter().map(|r| parse_col(&r.try_get::<String, _>("org_id")?, "upgrade_policies.org_id")).collect()
}
