//! API tokens for automation: stored as SHA-256 hashes with a short display prefix. A token
//! is bound to the member who created it: it acts with at most that member's current role,
//! and never once they have left the organization.

use sqlx::Row;

use super::{parse_col, Conn};
use crate::domain::{OrgId, Role, TokenId, UserId};

#[derive(Debug, Clone)]
pub struct ApiToken {
    pub id: TokenId,
    pub name: String,
    pub role: Role,
    pub prefix: String,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

pub struct NewApiToken<'a> {
    pub id: TokenId,
    pub org_id: OrgId,
    pub name: &'a str,
    pub role: Role,
    pub prefix: &'a str,
    pub token_hash: &'a str,
    /// The member the token acts for; it never acts with more than their current role.
    pub created_by: UserId,
    pub created_at: i64,
    pub expires_at: i64,
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.api_tokens.insert", skip_all)]
pub async fn insert(conn: &mut Conn, t: &NewApiToken<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO api_tokens (id, org_id, name, role, prefix, token_hash, created_by, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(t.id.to_string())
    .bind(t.org_id.to_string())
    .bind(t.name)
    .bind(t.role.as_str())
    .bind(t.prefix)
    .bind(t.token_hash)
    .bind(t.created_by.to_string())
    .bind(t.created_at)
    .bind(t.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

const COLUMNS: &str = "id, name, role, prefix, created_by, created_at, expires_at, last_used_at, revoked_at";

fn from_row(r: &sqlx::any::AnyRow) -> Result<ApiToken, sqlx::Error> {
    Ok(ApiToken {
        id: parse_col(&r.try_get::<String, _>("id")?, "api_tokens.id")?,
        name: r.try_get("name")?,
        role: parse_col(&r.try_get::<String, _>("role")?, "api_tokens.role")?,
        prefix: r.try_get("prefix")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        last_used_at: r.try_get("last_used_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.api_tokens.list", skip_all)]
pub async fn list(conn: &mut Conn, org: OrgId) -> Result<Vec<ApiToken>, sqlx::Error> {
    let rows =
        sqlx::query(&format!("SELECT {COLUMNS} FROM api_tokens WHERE org_id = $1 ORDER BY created_at DESC, id")).bind(org.to_string()).fetch_all(conn).await?;
    rows.iter().map(from_row).collect()
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.api_tokens.get", skip_all)]
pub async fn get(conn: &mut Conn, org: OrgId, id: TokenId) -> Result<Option<ApiToken>, sqlx::Error> {
    super::one_of_org(conn, "api_tokens", COLUMNS, org, id, from_row).await
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.api_tokens.revoke", skip_all)]
pub async fn revoke(conn: &mut Conn, org: OrgId, id: TokenId, now: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE api_tokens SET revoked_at = $3 WHERE org_id = $1 AND id = $2 AND revoked_at IS NULL")
        .bind(org.to_string())
        .bind(id.to_string())
        .bind(now)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub struct Authenticated {
    pub id: TokenId,
    pub org_id: OrgId,
    /// The token's own role capped at its creator's current role.
    pub role: Role,
    pub last_used_at: Option<i64>,
    pub expires_at: i64,
}

/// A live (unrevoked, unexpired) token by its hash, whose creator is still a member.
#[tracing::instrument(target = "meshfleet_traces", name = "store.api_tokens.authenticate", skip_all)]
pub async fn authenticate(conn: &mut Conn, token_hash: &str, now: i64) -> Result<Option<Authenticated>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT t.id AS id, t.org_id AS org_id, t.role AS own_role, m.role AS creator_role, t.last_used_at AS last_used_at, t.expires_at AS expires_at
         FROM api_tokens t
         JOIN memberships m ON m.org_id = t.org_id AND m.user_id = t.created_by
         WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND t.expires_at > $2",
    )
    .bind(token_hash)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        let own: Role = parse_col(&r.try_get::<String, _>("own_role")?, "api_tokens.role")?;
        let creator: Role = parse_col(&r.try_get::<String, _>("creator_role")?, "memberships.role")?;
        Ok(Authenticated {
            id: parse_col(&r.try_get::<String, _>("id")?, "api_tokens.id")?,
            org_id: parse_col(&r.try_get::<String, _>("org_id")?, "api_tokens.org_id")?,
            role: own.min(creator),
            last_used_at: r.try_get("last_used_at")?,
            expires_at: r.try_get("expires_at")?,
        })
    })
    .transpose()
}

/// The member a token acts for: a token made by a token acts for the same member.
#[tracing::instrument(target = "meshfleet_traces", name = "store.api_tokens.creator", skip_all)]
pub async fn creator(conn: &mut Conn, org: OrgId, id: TokenId) -> Result<Option<UserId>, sqlx::Error> {
    let creator: Option<Option<String>> = sqlx::query_scalar("SELECT created_by FROM api_tokens WHERE org_id = $1 AND id = $2")
        .bind(org.to_string())
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    creator.flatten().map(|c| parse_col(&c, "api_tokens.created_by")).transpose()
}

/// Revokes every live token the member created in the organization; returns how many.
#[tracing::instrument(target = "meshfleet_traces", name = "store.api_tokens.revoke_created_by", skip_all)]
pub async fn revoke_created_by(conn: &mut Conn, org: OrgId, user: UserId, now: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("UPDATE api_tokens SET revoked_at = $3 WHERE org_id = $1 AND created_by = $2 AND revoked_at IS NULL")
        .bind(org.to_string())
        .bind(user.to_string())
        .bind(now)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.api_tokens.touch", skip_all)]
pub async fn touch(conn: &mut Conn, id: TokenId, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE api_tokens SET last_used_at = $2 WHERE id = $1").bind(id.to_string()).bind(now).execute(conn).await?;
    Ok(())
}
