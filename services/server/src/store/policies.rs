//! Notification policies of an organization, and the alert groups they notified.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::Row;

use super::{json_col, parse_col, Conn};
use crate::domain::policies::{GroupBy, Notified, Policy, Timing};
use crate::domain::silences::{MatcherSpec, Matchers};
use crate::domain::{ChannelId, OrgId, PolicyId};

const COLUMNS: &str =
    "id, org_id, name, position, matchers, channel_ids, group_by, group_wait_ms, group_interval_ms, repeat_interval_ms, continue_matching, created_at, updated_at";

fn from_row(r: &sqlx::any::AnyRow) -> Result<Policy, sqlx::Error> {
    let bad = |column: &str, e: String| sqlx::Error::Decode(format!("bad value in column notification_policies.{column}: {e}").into());
    let specs: Vec<MatcherSpec> = json_col(r, "matchers")?;
    let group_by: Vec<String> = json_col(r, "group_by")?;
    Ok(Policy {
        id: parse_col(&r.try_get::<String, _>("id")?, "notification_policies.id")?,
        org_id: parse_col(&r.try_get::<String, _>("org_id")?, "notification_policies.org_id")?,
        name: r.try_get("name")?,
        position: r.try_get("position")?,
        matchers: Matchers::parse_route(&specs).map_err(|e| bad("matchers", format!("{e:?}")))?,
        channels: json_col(r, "channel_ids")?,
        group_by: GroupBy::parse(&group_by).map_err(|e| bad("group_by", e.1))?,
        timing: Timing {
            group_wait: r.try_get("group_wait_ms")?,
            group_interval: r.try_get("group_interval_ms")?,
            repeat_interval: r.try_get("repeat_interval_ms")?,
        },
        continue_matching: r.try_get::<i64, _>("continue_matching")? != 0,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// Inserts the policy, or replaces the one with its id.
#[tracing::instrument(target = "meshfleet_traces", name = "store.policies.upsert", skip_all)]
pub async fn upsert(conn: &mut Conn, p: &Policy) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM notification_policies WHERE org_id = $1 AND id = $2")
        .bind(p.org_id.to_string())
        .bind(p.id.to_string())
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!("INSERT INTO notification_policies ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"))
        .bind(p.id.to_string())
        .bind(p.org_id.to_string())
        .bind(&p.name)
        .bind(p.position)
        .bind(serde_json::to_string(&p.matchers.specs()).expect("matchers always serialize"))
        .bind(serde_json::to_string(&p.channels).expect("ids always serialize"))
        .bind(serde_json::to_string(&p.group_by.names()).expect("names always serialize"))
        .bind(p.timing.group_wait)
        .bind(p.timing.group_interval)
        .bind(p.timing.repeat_interval)
        .bind(i64::from(p.continue_matching))
        .bind(p.created_at)
        .bind(p.updated_at)
        .execute(conn)
        .await?;
    Ok(())
}

/// In routing order.
#[tracing::instrument(target = "meshfleet_traces", name = "store.policies.list", skip_all)]
pub async fn list(conn: &mut Conn, org: OrgId) -> Result<Vec<Policy>, sqlx::Error> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM notification_policies WHERE org_id = $1 ORDER BY position, id"))
        .bind(org.to_string())
        .fetch_all(conn)
        .await?;
    rows.iter().map(from_row).collect()
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.policies.get", skip_all)]
pub async fn get(conn: &mut Conn, org: OrgId, id: PolicyId) -> Result<Option<Policy>, sqlx::Error> {
    super::one_of_org(conn, "notification_policies", COLUMNS, org, id, from_row).await
}

/// Deletes the policy and what its groups remember: alerts it routed are notified afresh by
/// the routes that take them now.
#[tracing::instrument(target = "meshfleet_traces", name = "store.policies.delete", skip_all)]
pub async fn delete(conn: &mut Conn, org: OrgId, id: PolicyId) -> Result<bool, sqlx::Error> {
    forget_groups_of(&mut *conn, org, &id.to_string()).await?;
    let done = sqlx::query("DELETE FROM notification_policies WHERE org_id = $1 AND id = $2").bind(org.to_string()).bind(id.to_string()).execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

/// Forgets the groups of a route (a policy whose grouping or channels changed).
#[tracing::instrument(target = "meshfleet_traces", name = "store.policies.forget_groups_of", skip_all)]
pub async fn forget_groups_of(conn: &mut Conn, org: OrgId, route: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM alert_groups WHERE org_id = $1 AND route = $2").bind(org.to_string()).bind(route).execute(conn).await?;
    Ok(())
}

/// Removes a deleted channel from every policy naming it.
#[tracing::instrument(target = "meshfleet_traces", name = "store.policies.drop_channel", skip_all)]
pub async fn drop_channel(conn: &mut Conn, org: OrgId, channel: ChannelId) -> Result<(), sqlx::Error> {
    for mut p in list(&mut *conn, org).await? {
        if p.channels.contains(&channel) {
            p.channels.retain(|c| *c != channel);
            upsert(&mut *conn, &p).await?;
        }
    }
    Ok(())
}

/// A group as stored: its route, key and labels, and what it last notified.
#[derive(Debug, Clone)]
pub struct StoredGroup {
    pub route: String,
    pub key: String,
    pub labels: BTreeMap<String, String>,
    pub notified: Notified,
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.policies.groups", skip_all)]
pub async fn groups(conn: &mut Conn, org: OrgId) -> Result<Vec<StoredGroup>, sqlx::Error> {
    let rows = sqlx::query("SELECT route, group_key, labels, sent, created_at, flushed_at FROM alert_groups WHERE org_id = $1")
        .bind(org.to_string())
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(StoredGroup {
                route: r.try_get("route")?,
                key: r.try_get("group_key")?,
                labels: json_col(r, "labels")?,
                notified: Notified {
                    created_at: r.try_get("created_at")?,
                    flushed_at: r.try_get("flushed_at")?,
                    sent: json_col::<BTreeSet<String>>(r, "sent")?,
                },
            })
        })
        .collect()
}

/// Records a group as it is now (created, or just notified).
#[tracing::instrument(target = "meshfleet_traces", name = "store.policies.save_group", skip_all)]
pub async fn save_group(conn: &mut Conn, org: OrgId, g: &StoredGroup) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO alert_groups (org_id, route, group_key, labels, sent, created_at, flushed_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (org_id, route, group_key) DO UPDATE SET labels = $4, sent = $5, created_at = $6, flushed_at = $7",
    )
    .bind(org.to_string())
    .bind(&g.route)
    .bind(&g.key)
    .bind(serde_json::to_string(&g.labels).expect("labels always serialize"))
    .bind(serde_json::to_string(&g.notified.sent).expect("fingerprints always serialize"))
    .bind(g.notified.created_at)
    .bind(g.notified.flushed_at)
    .execute(conn)
    .await?;
    Ok(())
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.policies.forget_group", skip_all)]
pub async fn forget_group(conn: &mut Conn, org: OrgId, route: &str, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM alert_groups WHERE org_id = $1 AND route = $2 AND group_key = $3")
        .bind(org.to_string())
        .bind(route)
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}
