//! Members of the caller's organization and their roles. Owners and admins manage members;
//! only owners grant or take away ownership; the last owner stays.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::Principal;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::problems::{BadRequest, Conflict, Forbidden, Internal, JsonBody, NotFound, Unauthenticated};
use crate::app::AppState;
use crate::db::{is_unique_violation, to_rfc3339};
use crate::domain::{schema, Email, OrgId, Role, UserId};
use crate::store::audit;
use crate::store::{self, accounts::Member, Conn};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_members, add_member)).routes(routes!(update_member, remove_member))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MemberView {
    pub user_id: UserId,
    pub email: String,
    pub role: Role,
    pub since: chrono::DateTime<chrono::Utc>,
}

impl From<Member> for MemberView {
    fn from(m: Member) -> Self {
        MemberView { user_id: m.user_id, email: m.email, role: m.role, since: to_rfc3339(m.since) }
    }
}

/// Members of the organization.
#[utoipa::path(get, path = "/api/v1/members", tag = "members",
    responses((status = 200, body = Vec<MemberView>), Unauthenticated, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn list_members(State(state): State<AppState>, auth: Principal) -> Result<Json<Vec<MemberView>>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    let members = store::accounts::list_members(&mut conn, auth.org_id).await?;
    Ok(Json(members.into_iter().map(Into::into).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMemberRequest {
    /// An existing user's e-mail.
    #[schema(schema_with = schema::email)]
    pub email: String,
    pub role: Role,
}

/// Adds an existing user to the organization.
#[utoipa::path(post, path = "/api/v1/members", tag = "members", request_body = AddMemberRequest,
    responses((status = 201, body = MemberView), JsonBody, Unauthenticated, Forbidden, Conflict, Internal),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn add_member(
    State(state): State<AppState>,
    auth: Principal,
    ApiJson(req): ApiJson<AddMemberRequest>,
) -> Result<(StatusCode, Json<MemberView>), ApiError> {
    auth.require(Role::Admin)?;
    owners_only_for(&auth, req.role)?;
    let email = req.email.parse::<Email>().map_err(|e| ApiError::field("email", e))?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    let user = store::accounts::user_id_by_email(&mut tx, &email)
        .await?
        .ok_or_else(|| ApiError::field("email", "no account has this e-mail; ask them to sign up first"))?;
    store::accounts::add_member(&mut tx, auth.org_id, user, req.role, now).await.map_err(|e| {
        if is_unique_violation(&e) {
            ApiError::Conflict { kind: "already-member", detail: "this user is already a member".into(), field: Some("email".into()) }
        } else {
            e.into()
        }
    })?;
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "member.add", ("user", user.to_string()), serde_json::json!({ "role": req.role })).await?;
    let member = store::accounts::get_member(&mut tx, auth.org_id, user).await?.ok_or(ApiError::NotFound("member"))?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(member.into())))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMemberRequest {
    pub role: Role,
}

/// Changes a member's role.
///
/// The member's API tokens are capped at the new role from the next request on.
#[utoipa::path(patch, path = "/api/v1/members/{user_id}", tag = "members", request_body = UpdateMemberRequest,
    params(("user_id" = UserId, Path, description = "The member's user id")),
    responses((status = 200, body = MemberView), JsonBody, Unauthenticated, Forbidden, NotFound, Conflict, Internal),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, user_id = %user))]
async fn update_member(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath(user): ApiPath<UserId>,
    ApiJson(req): ApiJson<UpdateMemberRequest>,
) -> Result<Json<MemberView>, ApiError> {
    auth.require(Role::Admin)?;
    owners_only_for(&auth, req.role)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    let current = locked_member(&mut tx, auth.org_id, user).await?;
    owners_only_for(&auth, current.role)?;
    if current.role == Role::Owner && req.role != Role::Owner {
        keep_an_owner(&mut tx, auth.org_id).await?;
    }
    store::accounts::set_role(&mut tx, auth.org_id, user, req.role).await?;
    audit::record(
        &mut tx,
        auth.org_id,
        now,
        &auth.actor,
        "member.update",
        ("user", user.to_string()),
        serde_json::json!({ "from": current.role, "to": req.role }),
    )
    .await?;
    tx.commit().await?;
    crate::gateway::dispatch::access_changed(&state).await;
    Ok(Json(MemberView { role: req.role, ..current.into() }))
}

/// Removes a member from the organization.
///
/// Their sessions and API tokens stop working at once (the tokens are revoked).
#[utoipa::path(delete, path = "/api/v1/members/{user_id}", tag = "members",
    params(("user_id" = UserId, Path, description = "The member's user id")),
    responses((status = 204), BadRequest, Unauthenticated, Forbidden, NotFound, Conflict, Internal),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, user_id = %user))]
async fn remove_member(State(state): State<AppState>, auth: Principal, ApiPath(user): ApiPath<UserId>) -> Result<StatusCode, ApiError> {
    auth.require(Role::Admin)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    let current = locked_member(&mut tx, auth.org_id, user).await?;
    owners_only_for(&auth, current.role)?;
    if current.role == Role::Owner {
        keep_an_owner(&mut tx, auth.org_id).await?;
    }
    store::accounts::remove_member(&mut tx, auth.org_id, user).await?;
    // Authentication already refuses tokens of non-members; revoking them also shows it in
    // the token list and keeps them dead if the user is added back later.
    let tokens_revoked = store::api_tokens::revoke_created_by(&mut tx, auth.org_id, user, now).await?;
    let details = serde_json::json!({ "role": current.role, "api_tokens_revoked": tokens_revoked });
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "member.remove", ("user", user.to_string()), details).await?;
    tx.commit().await?;
    crate::gateway::dispatch::access_changed(&state).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The member, with the organization locked against concurrent membership changes.
async fn locked_member(conn: &mut Conn, org: OrgId, user: UserId) -> Result<Member, ApiError> {
    store::accounts::lock_org(conn, org).await?;
    store::accounts::get_member(conn, org, user).await?.ok_or(ApiError::NotFound("member"))
}

/// Only owners grant ownership or touch an owner's membership.
fn owners_only_for(auth: &Principal, role: Role) -> Result<(), ApiError> {
    if role == Role::Owner {
        auth.require(Role::Owner)?;
    }
    Ok(())
}

async fn keep_an_owner(conn: &mut Conn, org: OrgId) -> Result<(), ApiError> {
    if store::accounts::count_owners(conn, org).await? <= 1 {
        return Err(ApiError::Conflict {
            kind: "last-owner",
            detail: "an organization needs at least one owner; make someone else owner first".into(),
            field: Some("role".into()),
        });
    }
    Ok(())
}
