//! Silences of an organization. Nothing here deletes one: expiring a silence moves its end to
//! now, so expired silences stay listed.

use sqlx::Row;

use super::{parse_col, Conn};
use crate::domain::silences::{CreatedBy, MatcherSpec, Matchers, Silence, SilenceState};
use crate::domain::{OrgId, SilenceId};

const COLUMNS: &str = "id, org_id, matchers, starts_at, ends_at, comment, created_by_kind, created_by_id, created_by_name, created_at, updated_at";

fn from_row(r: &sqlx::any::AnyRow) -> Result<Silence, sqlx::Error> {
    let specs: Vec<MatcherSpec> = serde_json::from_str(&r.try_get::<String, _>("matchers")?).map_err(|e| sqlx::Error::Decode(e.into()))?;
    let matchers = Matchers::parse(&specs).map_err(|e| sqlx::Error::Decode(format!("bad value in column silences.matchers: {e:?}").into()))?;
    Ok(Silence {
        id: parse_col(&r.try_get::<String, _>("id")?, "silences.id")?,
        org_id: parse_col(&r.try_get::<String, _>("org_id")?, "silences.org_id")?,
        matchers,
        starts_at: r.try_get("starts_at")?,
        ends_at: r.try_get("ends_at")?,
        comment: r.try_get("comment")?,
        created_by: CreatedBy { kind: r.try_get("created_by_kind")?, id: r.try_get("created_by_id")?, name: r.try_get("created_by_name")? },
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.silences.insert", skip_all)]
pub async fn insert(conn: &mut Conn, s: &Silence) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("INSERT INTO silences ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"))
        .bind(s.id.to_string())
        .bind(s.org_id.to_string())
        .bind(serde_json::to_string(&s.matchers.specs()).expect("matchers always serialize"))
        .bind(s.starts_at)
        .bind(s.ends_at)
        .bind(&s.comment)
        .bind(&s.created_by.kind)
        .bind(&s.created_by.id)
        .bind(&s.created_by.name)
        .bind(s.created_at)
        .bind(s.updated_at)
        .execute(conn)
        .await?;
    Ok(())
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.silences.get", skip_all)]
pub async fn get(conn: &mut Conn, org: OrgId, id: SilenceId) -> Result<Option<Silence>, sqlx::Error> {
    super::one_of_org(conn, "silences", COLUMNS, org, id, from_row).await
}

/// Newest first (ids are time-ordered), those in `state` at `now` (all when None); `before` is
/// the last id of the previous page.
#[tracing::instrument(target = "meshfleet_traces", name = "store.silences.list", skip_all)]
pub async fn list(
    conn: &mut Conn,
    org: OrgId,
    state: Option<SilenceState>,
    now: i64,
    before: Option<SilenceId>,
    limit: u32,
) -> Result<Vec<Silence>, sqlx::Error> {
    let state = match state {
        None => "",
        Some(SilenceState::Pending) => "pending",
        Some(SilenceState::Active) => "active",
        Some(SilenceState::Expired) => "expired",
    };
    // One statement for every filter (the same text each time, so it is prepared once per
    // connection); the conditions are SilenceState::at's.
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM silences WHERE org_id = $1 AND ($3 = '' OR id < $3)
           AND ($4 = ''
             OR ($4 = 'pending' AND starts_at > $2 AND ends_at > $2)
             OR ($4 = 'active' AND starts_at <= $2 AND ends_at > $2)
             OR ($4 = 'expired' AND ends_at <= $2))
         ORDER BY id DESC LIMIT {limit}"
    ))
    .bind(org.to_string())
    .bind(now)
    .bind(before.map(|b| b.to_string()).unwrap_or_default())
    .bind(state)
    .fetch_all(conn)
    .await?;
    rows.iter().map(from_row).collect()
}

/// The organization's silences active at `now`.
#[tracing::instrument(target = "meshfleet_traces", name = "store.silences.active", skip_all)]
pub async fn active(conn: &mut Conn, org: OrgId, now: i64) -> Result<Vec<Silence>, sqlx::Error> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM silences WHERE org_id = $1 AND ends_at > $2 AND starts_at <= $2 ORDER BY id"))
        .bind(org.to_string())
        .bind(now)
        .fetch_all(conn)
        .await?;
    rows.iter().map(from_row).collect()
}

/// Ends the silence now, if it has not ended (a pending one ends before it began: its start
/// moves to now too). Returns whether it changed.
#[tracing::instrument(target = "meshfleet_traces", name = "store.silences.expire", skip_all)]
pub async fn expire(conn: &mut Conn, org: OrgId, id: SilenceId, now: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE silences SET ends_at = $3, starts_at = CASE WHEN starts_at > $3 THEN $3 ELSE starts_at END, updated_at = $3
         WHERE org_id = $1 AND id = $2 AND ends_at > $3",
    )
    .bind(org.to_string())
    .bind(id.to_string())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Replaces what a silence mutes, when, and why (who made it stays).
#[tracing::instrument(target = "meshfleet_traces", name = "store.silences.update", skip_all)]
pub async fn update(conn: &mut Conn, s: &Silence) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE silences SET matchers = $3, starts_at = $4, ends_at = $5, comment = $6, updated_at = $7 WHERE org_id = $1 AND id = $2")
        .bind(s.org_id.to_string())
        .bind(s.id.to_string())
        .bind(serde_json::to_string(&s.matchers.specs()).expect("matchers always serialize"))
        .bind(s.starts_at)
        .bind(s.ends_at)
        .bind(&s.comment)
        .bind(s.updated_at)
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes silences that ended before `cutoff`; returns how many.
#[tracing::instrument(target = "meshfleet_traces", name = "store.silences.delete_ended_before", skip_all)]
pub async fn delete_ended_before(conn: &mut Conn, cutoff: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM silences WHERE ends_at < $1").bind(cutoff).execute(conn).await?;
    Ok(done.rows_affected())
}
