//! The audit log as owners and admins read it back (entries are written by
//! `store::audit::record`, in the transaction of each mutation).

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::Principal;
use super::error::ApiError;
use super::extract::ApiQuery;
use super::problems::{BadRequest, Forbidden, Internal, Invalid, Unauthenticated};
use crate::app::AppState;
use crate::db::to_rfc3339;
use crate::domain::Role;
use crate::store;

/// What the audit log keeps of a resource as an API response shows it: all of it but its id
/// (the entry's target) and its timestamps (the entry's own time).
pub fn details(view: &impl Serialize) -> serde_json::Value {
    let mut value = serde_json::to_value(view).expect("API views always serialize");
    if let Some(fields) = value.as_object_mut() {
        for key in ["id", "created_at", "updated_at"] {
            fields.remove(key);
        }
    }
    value
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditRecord {
    pub id: uuid::Uuid,
    pub at: chrono::DateTime<chrono::Utc>,
    pub actor_kind: String,
    pub actor_id: String,
    pub action: String,
    pub target_kind: String,
    pub target_id: String,
    pub details: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditRecord>,
    pub next_cursor: Option<String>,
}

/// The organization's audit log, newest first (owners and admins).
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(super::PageQuery),
    responses((status = 200, body = AuditPage), BadRequest, Unauthenticated, Forbidden, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn list_audit(State(state): State<AppState>, auth: Principal, ApiQuery(q): ApiQuery<super::PageQuery>) -> Result<Json<AuditPage>, ApiError> {
    auth.require(Role::Admin)?;
    let limit = super::page_limit(q.limit, 100)?;
    let before = q.uuid_cursor()?;
    let mut conn = state.db.pool.acquire().await?;
    let rows = store::audit::list(&mut conn, auth.org_id, before, limit + 1).await?;
    let (rows, next_cursor) = super::into_page(rows, limit, |r| r.id.to_string());
    let items = rows
        .into_iter()
        .map(|r| AuditRecord {
            id: r.id,
            at: to_rfc3339(r.at),
            actor_kind: r.actor_kind,
            actor_id: r.actor_id,
            action: r.action,
            target_kind: r.target_kind,
            target_id: r.target_id,
            details: r.details,
        })
        .collect();
    Ok(Json(AuditPage { items, next_cursor }))
}
