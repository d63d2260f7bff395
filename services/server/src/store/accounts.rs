//! Organizations, users and memberships.

use sqlx::Row;

use super::{parse_col, Conn};
use crate::domain::{Email, OrgId, Role, UserId};

#[tracing::instrument(target = "meshfleet_traces", name = "store.accounts.create_org", skip_all)]
pub async fn create_org(conn: &mut Conn, id: OrgId, name: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO organizations (id, name, created_at) VALUES ($1, $2, $3)").bind(id.to_string()).bind(name).bind(now).execute(conn).await?;
    Ok(())
}

/// Fails with a unique violation when the e-mail is taken.
#[tracing::instrument(target = "meshfleet_traces", name = "store.accounts.create_user", skip_all)]
pub async fn create_user(conn: &mut Conn, id: UserId, email: &Email, password_hash: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)")
        .bind(id.to_string())
        .bind(email.as_str())
        .bind(password_hash)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// Fails with a unique violation when the user is already a member.
#[tracing::instrument(target = "meshfleet_traces", name = "store.accounts.add_member", skip_all)]
pub async fn add_member(conn: &mut Conn, org: OrgId, user: UserId, role: Role, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO memberships (org_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)")
        .bind(org.to_string())
        .bind(user.to_string())
        .bind(role.as_str())
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

pub struct UserCredentials {
    pub id: UserId,
    pub password_hash: String,
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.accounts.find_user_by_email", skip_all)]
pub async fn find_user_by_email(conn: &mut Conn, email: &Email) -> Result<Option<UserCredentials>, sqlx::Error> {
    let row = sqlx::query("SELECT id, password_hash FROM users WHERE email = $1").bind(email.as_str()).fetch_optional(conn).await?;
    row.map(|r| Ok(UserCredentials { id: parse_col(&r.try_get::<String, _>("id")?, "users.id")?, password_hash: r.try_get("password_hash")? })).transpose()
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.accounts.user_id_by_email", skip_all)]
pub async fn user_id_by_email(conn: &mut Conn, email: &Email) -> Result<Option<UserId>, sqlx::Error> {
    Ok(find_user_by_email(conn, email).await?.map(|u| u.id))
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.accounts.user_email", skip_all)]
pub async fn user_email(conn: &mut Conn, user: UserId) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT email FROM users WHERE id = $1").bind(user.to_string()).fetch_optional(conn).await
}

/// An organization as seen by one of its members.
#[derive(Debug, Clone)]
pub struct OrgMembership {
    pub org_id: OrgId,
    pub org_name: String,
    pub role: Role,
    pub since: i64,
}

/// The user's organizations, oldest membership first (the default one to log into).
#[tracing::instrument(target = "meshfleet_traces", name = "store.accounts.memberships_of", skip_all)]
pub async fn memberships_of(conn: &mut Conn, user: UserId) -> Result<Vec<OrgMembership>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT o.id AS org_id, o.name AS org_name, m.role AS role, m.created_at AS since FROM memberships m JOIN organizations o ON o.id = m.org_id
         WHERE m.user_id = $1 ORDER BY m.created_at, o.id",
    )
    .bind(user.to_string())
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(OrgMembership {
                org_id: parse_col(&r.try_get::<String, _>("org_id")?, "organizations.id")?,
                org_name: r.try_get("org_name")?,
                role: parse_col(&r.try_get::<String, _>("role")?, "memberships.role")?,
                since: r.try_get("since")?,
            })
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct Member {
    pub user_id: UserId,
    pub email: String,
    pub role: Role,
    pub since: i64,
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.accounts.list_members", skip_all)]
pub async fn list_members(conn: &mut Conn, org: OrgId) -> Result<Vec<Member>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT u.id AS user_id, u.email AS email, m.role AS role, m.created_at AS since FROM memberships m JOIN users u ON u.id = m.user_id
         WHERE m.org_id = $1 ORDER BY m.created_at, u.id",
    )
    .bind(org.to_string())
    .fetch_all(conn)
    .await?;
    rows.iter().map(member_from_row).collect()
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.accounts.get_member", skip_all)]
pub async fn get_member(conn: &mut Conn, org: OrgId, user: UserId) -> Result<Option<Member>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT u.id AS user_id, u.email AS email, m.role AS role, m.created_at AS since FROM memberships m JOIN users u ON u.id = m.user_id
         WHERE m.org_id = $1 AND m.user_id = $2",
    )
    .bind(org.to_string())
    .bind(user.to_string())
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(member_from_row).transpose()
}

fn member_from_row(r: &sqlx::any::AnyRow) -> Result<Member, sqlx::Error> {
    Ok(Member {
        user_id: parse_col(&r.try_get::<String, _>("user_id")?, "users.id")?,
        email: r.try_get("email")?,
        role: parse_col(&r.try_get::<String, _>("role")?, "memberships.role")?,
        since: r.try_get("since")?,
    })
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.accounts.set_role", skip_all)]
pub async fn set_role(conn: &mut Conn, org: OrgId, user: UserId, role: Role) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE memberships SET role = $3 WHERE org_id = $1 AND user_id = $2")
        .bind(org.to_string())
        .bind(user.to_string())
        .bind(role.as_str())
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.accounts.remove_member", skip_all)]
pub async fn remove_member(conn: &mut Conn, org: OrgId, user: UserId) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM memberships WHERE org_id = $1 AND user_id = $2").bind(org.to_string()).bind(user.to_string()).execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.accounts.count_owners", skip_all)]
pub async fn count_owners(conn: &mut Conn, org: OrgId) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM memberships WHERE org_id = $1 AND role = 'owner'").bind(org.to_string()).fetch_one(conn).await
}

/// Serialises membership changes within one organization for the rest of the transaction
/// (a no-op write takes the row lock on PostgreSQL and the write lock on SQLite), so two
/// concurrent demotions cannot both pass the last-owner check.
#[tracing::instrument(target = "meshfleet_traces", name = "store.accounts.lock_org", skip_all)]
pub async fn lock_org(conn: &mut Conn, org: OrgId) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE organizations SET name = name WHERE id = $1").bind(org.to_string()).execute(conn).await?;
    Ok(())
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.accounts.org_name", skip_all)]
pub async fn org_name(conn: &mut Conn, org: OrgId) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT name FROM organizations WHERE id = $1").bind(org.to_string()).fetch_optional(conn).await
}
