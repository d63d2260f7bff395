//! API tokens for automation: stored as SHA-256 hashes with a short display prefix.

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
    pub created_by: Option<UserId>,
    pub created_at: i64,
    pub expires_at: i64,
}

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
    .bind(t.created_by.map(|u| u.to_string()))
    .bind(t.created_at)
    .bind(t.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

const COLUMNS: &str = "id, name, role, prefix, created_by, created_at, expires_at, last_used_at, revoked_at";

fn from_row(r: &sqlx::any::AnyRow) -> Result<ApiToken, sqlx::Error> {
    Ok(ApiToken {
        id: parse_col(&r.try_get::<String, _>(0)?, "api_tokens.id")?,
        name: r.try_get(1)?,
        role: parse_col(&r.try_get::<String, _>(2)?, "api_tokens.role")?,
        prefix: r.try_get(3)?,
        created_by: r.try_get(4)?,
        created_at: r.try_get(5)?,
        expires_at: r.try_get(6)?,
        last_used_at: r.try_get(7)?,
        revoked_at: r.try_get(8)?,
    })
}

pub async fn list(conn: &mut Conn, org: OrgId) -> Result<Vec<ApiToken>, sqlx::Error> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM api_tokens WHERE org_id = $1 ORDER BY created_at DESC, id"))
        .bind(org.to_string())
        .fetch_all(conn)
        .await?;
    rows.iter().map(from_row).collect()
}

pub async fn get(conn: &mut Conn, org: OrgId, id: TokenId) -> Result<Option<ApiToken>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM api_tokens WHERE org_id = $1 AND id = $2"))
        .bind(org.to_string())
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

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
    pub role: Role,
    pub last_used_at: Option<i64>,
    pub expires_at: i64,
}

/// A live (unrevoked, unexpired) token by its hash.
pub async fn authenticate(conn: &mut Conn, token_hash: &str, now: i64) -> Result<Option<Authenticated>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT id, org_id, role, last_used_at, expires_at FROM api_tokens
         WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > $2",
    )
    .bind(token_hash)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        Ok(Authenticated {
            id: parse_col(&r.try_get::<String, _>(0)?, "api_tokens.id")?,
            org_id: parse_col(&r.try_get::<String, _>(1)?, "api_tokens.org_id")?,
            role: parse_col(&r.try_get::<String, _>(2)?, "api_tokens.role")?,
            last_used_at: r.try_get(3)?,
            expires_at: r.try_get(4)?,
        })
    })
    .transpose()
}

pub async fn touch(conn: &mut Conn, id: TokenId, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE api_tokens SET last_used_at = $2 WHERE id = $1")
        .bind(id.to_string())
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}
