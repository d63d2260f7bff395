//! Dashboard sessions: the hash of the browser's cookie token, tied to a login session.

use sqlx::Row;

use super::{parse_col, Conn};
use crate::domain::{OrgId, SessionId, UserId};

#[tracing::instrument(target = "meshfleet_traces", name = "store.ui_sessions.insert", skip_all)]
pub async fn insert(conn: &mut Conn, token_hash: &str, session: SessionId, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO ui_sessions (token_hash, session_id, created_at) VALUES ($1, $2, $3)")
        .bind(token_hash)
        .bind(session.to_string())
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// The login session behind a cookie token (whether it is still live is checked by the caller).
#[tracing::instrument(target = "meshfleet_traces", name = "store.ui_sessions.find", skip_all)]
pub async fn find(conn: &mut Conn, token_hash: &str) -> Result<Option<(SessionId, UserId, OrgId)>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT s.id AS session_id, s.user_id AS user_id, s.org_id AS org_id FROM ui_sessions u JOIN sessions s ON s.id = u.session_id WHERE u.token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        Ok((
            parse_col(&r.try_get::<String, _>("session_id")?, "sessions.id")?,
            parse_col(&r.try_get::<String, _>("user_id")?, "sessions.user_id")?,
            parse_col(&r.try_get::<String, _>("org_id")?, "sessions.org_id")?,
        ))
    })
    .transpose()
}
