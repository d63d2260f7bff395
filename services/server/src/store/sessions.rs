//! Login sessions and their rotating refresh tokens (stored as SHA-256 hashes only).

use sqlx::Row;

use super::{parse_col, Conn};
use crate::domain::{OrgId, Role, SessionId, UserId};

#[tracing::instrument(target = "meshfleet_traces", name = "store.sessions.create", skip_all)]
pub async fn create(conn: &mut Conn, id: SessionId, org: OrgId, user: UserId, now: i64, expires_at: i64) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO sessions (id, org_id, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(id.to_string())
        .bind(org.to_string())
        .bind(user.to_string())
        .bind(now)
        .bind(expires_at)
        .execute(conn)
        .await?;
    Ok(())
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.sessions.insert_refresh_token", skip_all)]
pub async fn insert_refresh_token(conn: &mut Conn, token_hash: &str, session: SessionId, org: OrgId, now: i64, expires_at: i64) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO refresh_tokens (token_hash, session_id, org_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(token_hash)
        .bind(session.to_string())
        .bind(org.to_string())
        .bind(now)
        .bind(expires_at)
        .execute(conn)
        .await?;
    Ok(())
}

pub struct RefreshToken {
    pub session_id: SessionId,
    pub org_id: OrgId,
    pub user_id: UserId,
    pub expires_at: i64,
    pub used: bool,
    pub session_revoked: bool,
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.sessions.find_refresh_token", skip_all)]
pub async fn find_refresh_token(conn: &mut Conn, token_hash: &str) -> Result<Option<RefreshToken>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT s.id AS session_id, s.org_id AS org_id, s.user_id AS user_id, r.expires_at AS expires_at, r.used_at AS used_at, s.revoked_at AS revoked_at
         FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id WHERE r.token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        Ok(RefreshToken {
            session_id: parse_col(&r.try_get::<String, _>("session_id")?, "sessions.id")?,
            org_id: parse_col(&r.try_get::<String, _>("org_id")?, "sessions.org_id")?,
            user_id: parse_col(&r.try_get::<String, _>("user_id")?, "sessions.user_id")?,
            expires_at: r.try_get("expires_at")?,
            used: r.try_get::<Option<i64>, _>("used_at")?.is_some(),
            session_revoked: r.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
        })
    })
    .transpose()
}

/// Marks the token used; false when another request used it first (a replay race).
#[tracing::instrument(target = "meshfleet_traces", name = "store.sessions.use_refresh_token", skip_all)]
pub async fn use_refresh_token(conn: &mut Conn, token_hash: &str, now: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE refresh_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL").bind(token_hash).bind(now).execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

/// Revokes the session: its refresh tokens and the access tokens issued from it stop working.
#[tracing::instrument(target = "meshfleet_traces", name = "store.sessions.revoke", skip_all)]
pub async fn revoke(conn: &mut Conn, session: SessionId, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL").bind(session.to_string()).bind(now).execute(conn).await?;
    Ok(())
}

/// The role of a live session's user in the session's organization; None when the session
/// was revoked, expired, or the user is no longer a member.
#[tracing::instrument(target = "meshfleet_traces", name = "store.sessions.live_role", skip_all)]
pub async fn live_role(conn: &mut Conn, session: SessionId, user: UserId, org: OrgId, now: i64) -> Result<Option<Role>, sqlx::Error> {
    let role: Option<String> = sqlx::query_scalar(
        "SELECT m.role FROM sessions s JOIN memberships m ON m.org_id = s.org_id AND m.user_id = s.user_id
         WHERE s.id = $1 AND s.user_id = $2 AND s.org_id = $3 AND s.revoked_at IS NULL AND s.expires_at > $4",
    )
    .bind(session.to_string())
    .bind(user.to_string())
    .bind(org.to_string())
    .bind(now)
    .fetch_optional(conn)
    .await?;
    role.map(|r| parse_col(&r, "memberships.role")).transpose()
}
