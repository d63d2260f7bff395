//! The append-only audit log of every mutation, per organization.

use std::collections::{BTreeSet, HashMap};

use sqlx::Row;

use super::{parse_col, Conn};
use crate::domain::audit::{Actor, AuditEntry};
use crate::domain::OrgId;

/// Appends that `actor` did `action` to `target`; call it in the transaction of the mutation.
#[tracing::instrument(target = "meshfleet_traces", name = "store.audit.record", skip_all)]
pub async fn record(
    conn: &mut Conn,
    org: OrgId,
    now: i64,
    actor: &Actor,
    action: &str,
    target: (&str, String),
    details: serde_json::Value,
) -> Result<(), sqlx::Error> {
    insert(conn, &AuditEntry::new(org, now, actor, action, target, details)).await
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.audit.insert", skip_all)]
pub async fn insert(conn: &mut Conn, e: &AuditEntry) -> Result<(), sqlx::Error> {
    insert_many(conn, std::slice::from_ref(e)).await
}

/// Inserts entries by multi-row statements (a rollout's look may record a thousand steps).
#[tracing::instrument(target = "meshfleet_traces", name = "store.audit.insert_many", skip_all)]
pub async fn insert_many(conn: &mut Conn, entries: &[AuditEntry]) -> Result<(), sqlx::Error> {
    const COLS: usize = 9;
    for chunk in entries.chunks(super::rows_per_statement(conn, COLS)) {
        let sql = format!(
            "INSERT INTO audit_log (id, org_id, at, actor_kind, actor_id, action, target_kind, target_id, details) VALUES {}",
            super::values_clause(chunk.len(), COLS)
        );
        let mut q = sqlx::query(&sql);
        for e in chunk {
            q = q
                .bind(e.id.to_string())
                .bind(e.org_id.to_string())
                .bind(e.at)
                .bind(&e.actor_kind)
                .bind(&e.actor_id)
                .bind(&e.action)
                .bind(&e.target_kind)
                .bind(&e.target_id)
                .bind(e.details.to_string());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Newest first; `before` is the id of the last entry of the previous page.
#[tracing::instrument(target = "meshfleet_traces", name = "store.audit.list", skip_all)]
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
            let details: String = r.try_get("details")?;
            Ok(AuditEntry {
                id: parse_col(&r.try_get::<String, _>("id")?, "audit_log.id")?,
                org_id: parse_col(&r.try_get::<String, _>("org_id")?, "audit_log.org_id")?,
                at: r.try_get("at")?,
                actor_kind: r.try_get("actor_kind")?,
                actor_id: r.try_get("actor_id")?,
                action: r.try_get("action")?,
                target_kind: r.try_get("target_kind")?,
                target_id: r.try_get("target_id")?,
                details: serde_json::from_str(&details).map_err(|e| sqlx::Error::Decode(e.into()))?,
            })
        })
        .collect()
}

/// What people call the actors and targets of `entries`: users' e-mails and the names of
/// clusters and API tokens, keyed by (kind, id). Deleted things are missing from the map.
#[tracing::instrument(target = "meshfleet_traces", name = "store.audit.names", skip_all)]
pub async fn names(conn: &mut Conn, org: OrgId, entries: &[AuditEntry]) -> Result<HashMap<(String, String), String>, sqlx::Error> {
    let mut ids: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for e in entries {
        ids.entry(e.actor_kind.as_str()).or_default().insert(&e.actor_id);
        ids.entry(e.target_kind.as_str()).or_default().insert(&e.target_id);
        if let Some(cluster) = e.details.get("cluster").and_then(|c| c.as_str()) {
            ids.entry("cluster").or_default().insert(cluster);
        }
    }
    let mut out = HashMap::new();
    // Users are not tenant rows, but these ids come from this organization's own log.
    for (kind, table, column, scoped) in [("user", "users", "email", false), ("cluster", "clusters", "name", true), ("api_token", "api_tokens", "name", true)] {
        let Some(wanted) = ids.get(kind).filter(|w| !w.is_empty()) else { continue };
        let first = if scoped { 2 } else { 1 };
        let list: Vec<String> = (0..wanted.len()).map(|i| format!("${}", i + first)).collect();
        let org_filter = if scoped { "org_id = $1 AND " } else { "" };
        let sql = format!("SELECT id, {column} AS label FROM {table} WHERE {org_filter}id IN ({})", list.join(", "));
        let mut q = sqlx::query(&sql);
        if scoped {
            q = q.bind(org.to_string());
        }
        for id in wanted {
            q = q.bind(*id);
        }
        for r in q.fetch_all(&mut *conn).await? {
            out.insert((kind.to_owned(), r.try_get::<String, _>("id")?), r.try_get::<String, _>("label")?);
        }
        // Deleted clusters and tokens are still named by the entries that created or deleted them.
        let gone: Vec<&str> = wanted.iter().copied().filter(|id| !out.contains_key(&(kind.to_owned(), (*id).to_owned()))).collect();
        if scoped && !gone.is_empty() {
            let list: Vec<String> = (0..gone.len()).map(|i| format!("${}", i + 3)).collect();
            let sql = format!(
                "SELECT target_id, details FROM audit_log WHERE org_id = $1 AND target_kind = $2 AND target_id IN ({}) AND action IN ('{kind}.create', '{kind}.delete')",
                list.join(", ")
            );
            let mut q = sqlx::query(&sql).bind(org.to_string()).bind(kind);
            for id in &gone {
                q = q.bind(*id);
            }
            for r in q.fetch_all(&mut *conn).await? {
                let details: serde_json::Value = serde_json::from_str(&r.try_get::<String, _>("details")?).map_err(|e| sqlx::Error::Decode(e.into()))?;
                if let Some(name) = details.get("name").and_then(|n| n.as_str()) {
                    out.insert((kind.to_owned(), r.try_get::<String, _>("target_id")?), name.to_owned());
                }
            }
        }
    }
    Ok(out)
}
