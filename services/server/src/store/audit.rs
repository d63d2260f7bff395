//! The append-only audit log of every mutation, per organization.

use sqlx::Row;

use super::{parse_col, Conn};
use crate::domain::OrgId;

#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub id: uuid::Uuid,
    pub org_id: OrgId,
    pub at: i64,
    pub actor_kind: String,
    pub actor_id: String,
    pub action: String,
    pub target_kind: String,
    pub target_id: String,
    pub details: serde_json::Value,
}

pub async fn record(conn: &mut Conn, e: &AuditEntry) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (id, org_id, at, actor_kind, actor_id, action, target_kind, target_id, details)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(e.id.to_string())
    .bind(e.org_id.to_string())
    .bind(e.at)
    .bind(&e.actor_kind)
    .bind(&e.actor_id)
    .bind(&e.action)
    .bind(&e.target_kind)
    .bind(&e.target_id)
    .bind(e.details.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// Newest first; `before` is the id of the last entry of the previous page.
pub async fn list(conn: &mut Conn, org: OrgId, before: Option<uuid::Uuid>, limit: u32) -> Result<Vec<AuditEntry>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT id, org_id, at, actor_kind, actor_id, action, target_kind, target_id, details FROM audit_log
         WHERE org_id = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT {limit}"
    ))
    .bind(org.to_string())
    .bind(before.map(|b| b.to_string()).unwrap_or_default())
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            let details: String = r.try_get(8)?;
            Ok(AuditEntry {
                id: parse_col(&r.try_get::<String, _>(0)?, "audit_log.id")?,
                org_id: parse_col(&r.try_get::<String, _>(1)?, "audit_log.org_id")?,
                at: r.try_get(2)?,
                actor_kind: r.try_get(3)?,
                actor_id: r.try_get(4)?,
                action: r.try_get(5)?,
                target_kind: r.try_get(6)?,
                target_id: r.try_get(7)?,
                details: serde_json::from_str(&details).map_err(|e| sqlx::Error::Decode(e.into()))?,
            })
        })
        .collect()
}
