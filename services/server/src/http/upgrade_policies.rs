//! Upgrade policies of the caller's organization: everyone reads them, admins write them.
//! `GET /api/v1/clusters/{id}/upgrades` shows which one governs a cluster.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::Principal;
use super::error::{ApiError, FieldError};
use super::extract::{ApiJson, ApiPath};
use super::problems::{BadRequest, Forbidden, Internal, Invalid, JsonBody, NotFound, Unauthenticated};
use crate::app::AppState;
use crate::db::to_rfc3339;
use crate::domain::releases::Channel;
use crate::domain::upgrade_policies::{Mode, UpgradePolicy, UpgradePolicySpec, WindowSpec, MAX_POLICIES};
use crate::domain::{Role, UpgradePolicyId};
use crate::store::{self, audit};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_upgrade_policies, create_upgrade_policy)).routes(routes!(
        get_upgrade_policy,
        replace_upgrade_policy,
        delete_upgrade_policy
    ))
}

/// An upgrade policy: its spec as written (trimmed), with its id and times.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UpgradePolicyView {
    pub id: UpgradePolicyId,
    pub name: String,
    pub selector: String,
    pub position: i64,
    pub channel: Channel,
    pub mode: Mode,
    pub windows: Vec<WindowSpec>,
    pub time_zone: String,
    pub pinned_version: Option<String>,
    pub excluded: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<UpgradePolicy> for UpgradePolicyView {
    fn from(p: UpgradePolicy) -> UpgradePolicyView {
        let UpgradePolicySpec { name, selector, position, channel, mode, windows, time_zone, pinned_version, excluded } = p.spec;
        UpgradePolicyView {
            id: p.id,
            name,
            selector,
            position,
            channel,
            mode,
            windows,
            time_zone,
            pinned_version,
            excluded,
            created_at: to_rfc3339(p.created_at),
            updated_at: to_rfc3339(p.updated_at),
        }
    }
}

async fn find(conn: &mut store::Conn, auth: &Principal, id: UpgradePolicyId) -> Result<UpgradePolicy, ApiError> {
    store::upgrade_policies::get(conn, auth.org_id, id).await?.ok_or(ApiError::NotFound("upgrade policy"))
}

fn checked(auth: &Principal, id: UpgradePolicyId, spec: UpgradePolicySpec, created_at: i64, now: i64) -> Result<UpgradePolicy, ApiError> {
    UpgradePolicy::new(id, auth.org_id, spec, created_at, now).map_err(|e| ApiError::Validation(e.into_iter().map(|(f, m)| FieldError::new(f, m)).collect()))
}

/// The organization's upgrade policies, in the order they are tried.
#[utoipa::path(get, path = "/api/v1/upgrade-policies", tag = "upgrades",
    responses((status = 200, body = Vec<UpgradePolicyView>), Unauthenticated, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn list_upgrade_policies(State(state): State<AppState>, auth: Principal) -> Result<Json<Vec<UpgradePolicyView>>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    Ok(Json(store::upgrade_policies::list(&mut conn, auth.org_id).await?.into_iter().map(Into::into).collect()))
}

/// Creates an upgrade policy (admins).
#[utoipa::path(post, path = "/api/v1/upgrade-policies", tag = "upgrades", request_body = UpgradePolicySpec,
    responses((status = 201, body = UpgradePolicyView), JsonBody, Unauthenticated, Forbidden, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn create_upgrade_policy(
    State(state): State<AppState>,
    auth: Principal,
    ApiJson(spec): ApiJson<UpgradePolicySpec>,
) -> Result<(StatusCode, Json<UpgradePolicyView>), ApiError> {
    auth.require(Role::Admin)?;
    let now = state.clock.now_ms();
    let policy = checked(&auth, UpgradePolicyId::new(), spec, now, now)?;
    let mut tx = state.db.begin().await?;
    if store::upgrade_policies::count(&mut tx, auth.org_id).await? >= MAX_POLICIES as i64 {
        return Err(ApiError::field("name", format!("an organization has at most {MAX_POLICIES} upgrade policies")));
    }
    store::upgrade_policies::upsert(&mut tx, &policy).await?;
    let view = UpgradePolicyView::from(policy);
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "upgrade_policy.create", ("upgrade_policy", view.id.to_string()), super::audit::details(&view))
        .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// One upgrade policy.
#[utoipa::path(get, path = "/api/v1/upgrade-policies/{id}", tag = "upgrades",
    params(("id" = UpgradePolicyId, Path, description = "Upgrade policy id")),
    responses((status = 200, body = UpgradePolicyView), BadRequest, Unauthenticated, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, policy_id = %id))]
async fn get_upgrade_policy(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath(id): ApiPath<UpgradePolicyId>,
) -> Result<Json<UpgradePolicyView>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    Ok(Json(find(&mut conn, &auth, id).await?.into()))
}

/// Replaces an upgrade policy (admins).
#[utoipa::path(put, path = "/api/v1/upgrade-policies/{id}", tag = "upgrades", request_body = UpgradePolicySpec,
    params(("id" = UpgradePolicyId, Path, description = "Upgrade policy id")),
    responses((status = 200, body = UpgradePolicyView), JsonBody, BadRequest, Unauthenticated, Forbidden, NotFound, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, policy_id = %id))]
async fn replace_upgrade_policy(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath(id): ApiPath<UpgradePolicyId>,
    ApiJson(spec): ApiJson<UpgradePolicySpec>,
) -> Result<Json<UpgradePolicyView>, ApiError> {
    auth.require(Role::Admin)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    let old = find(&mut tx, &auth, id).await?;
    let policy = checked(&auth, id, spec, old.created_at, now)?;
    store::upgrade_policies::upsert(&mut tx, &policy).await?;
    let view = UpgradePolicyView::from(policy);
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "upgrade_policy.update", ("upgrade_policy", id.to_string()), super::audit::details(&view)).await?;
    tx.commit().await?;
    Ok(Json(view))
}

/// Deletes an upgrade policy (admins); its clusters follow the next matching one.
#[utoipa::path(delete, path = "/api/v1/upgrade-policies/{id}", tag = "upgrades",
    params(("id" = UpgradePolicyId, Path, description = "Upgrade policy id")),
    responses((status = 204), BadRequest, Unauthenticated, Forbidden, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, policy_id = %id))]
async fn delete_upgrade_policy(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<UpgradePolicyId>) -> Result<StatusCode, ApiError> {
    auth.require(Role::Admin)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    let policy = find(&mut tx, &auth, id).await?;
    store::upgrade_policies::delete(&mut tx, auth.org_id, id).await?;
    let target = ("upgrade_policy", id.to_string());
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "upgrade_policy.delete", target, serde_json::json!({ "name": policy.spec.name })).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
