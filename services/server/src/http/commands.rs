//! Commands for a cluster's agent: created here, delivered by the gateway at least once,
//! executed once by the agent, with the result readable here.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::Principal;
use super::clusters::find;
use super::error::{ApiError, FieldError};
use super::extract::{whole_number, whole_numbers, ApiJson, ApiPath, ApiQuery};
use super::problems::{BadRequest, Conflict, Forbidden, Internal, Invalid, JsonBody, NotFound, Unauthenticated};
use crate::app::AppState;
use crate::db::to_rfc3339;
use crate::domain::{ClusterId, CommandId, Role};
use crate::store::audit;
use crate::store::{self, commands::Command};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_commands, create_command)).routes(routes!(get_command))
}

/// Command kinds the API takes: every typed message of the agent protocol (`Body::KINDS`) but
/// those only the service sends, as steps of a workflow it runs (`SERVICE_KINDS`).
pub const KINDS: &[&str] = &["ping", "collect-diagnostics", "restart-workloads", "set-control-plane-version", "rotate-issuer"];

/// set-trust-bundle: trust-anchor rotation's distribute and retire steps; a bundle set by hand
/// would bypass the organization's anchors and their audit trail.
pub const SERVICE_KINDS: &[&str] = &["set-trust-bundle"];

/// Kinds that change nothing in the cluster, offered as one-click buttons in the dashboard.
pub const READ_ONLY_KINDS: &[&str] = &["ping", "collect-diagnostics"];

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CommandView {
    pub id: CommandId,
    pub cluster_id: ClusterId,
    pub kind: String,
    pub params: serde_json::Value,
    /// pending, delivered, running, succeeded, failed or expired.
    pub state: String,
    pub created_by: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub deadline: chrono::DateTime<chrono::Utc>,
    /// Deliveries so far (at least once: an agent that reconnects gets it again).
    pub attempts: i64,
    pub delivered_at: Option<chrono::DateTime<chrono::Utc>>,
    pub completed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub progress: i64,
    pub message: String,
    pub output: Option<serde_json::Value>,
}

impl From<Command> for CommandView {
    fn from(c: Command) -> Self {
        CommandView {
            id: c.id,
            cluster_id: c.cluster_id,
            kind: c.kind,
            params: c.params,
            state: c.state,
            created_by: c.created_by,
            created_at: to_rfc3339(c.created_at),
            deadline: to_rfc3339(c.deadline),
            attempts: c.attempts,
            delivered_at: c.delivered_at.map(to_rfc3339),
            completed_at: c.completed_at.map(to_rfc3339),
            progress: c.progress,
            message: c.message,
            output: c.output,
        }
    }
}

/// Documented by hand (see `schema`): which parameters are allowed depends on the kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCommandRequest {
    pub kind: String,
    #[serde(default)]
    pub params: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "whole_number")]
    pub deadline_secs: Option<i64>,
}

mod schema;
pub mod typed;

/// Creates a command for the cluster's agent.
#[utoipa::path(post, path = "/api/v1/clusters/{id}/commands", tag = "commands", params(("id" = ClusterId, Path, description = "Cluster id")),
    request_body = CreateCommandRequest,
    responses((status = 201, body = CommandView), JsonBody, Unauthenticated, Forbidden, NotFound, Conflict, Invalid, Internal),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, cluster_id = %cluster))]
async fn create_command(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath(cluster): ApiPath<ClusterId>,
    ApiJson(req): ApiJson<CreateCommandRequest>,
) -> Result<(StatusCode, Json<CommandView>), ApiError> {
    auth.require(Role::Admin)?;
    let mut params = req.params.unwrap_or_else(|| serde_json::json!({}));
    if let Some(map) = params.as_object_mut() {
        whole_numbers(map);
    }
    // Checked by conversion; what is stored and shown is the JSON as given.
    let mut errors = if !SERVICE_KINDS.contains(&req.kind.as_str()) {
        typed::from_rest(&req.kind, &params).err().unwrap_or_default()
    } else {
        vec![FieldError::new("kind", format!("{} is sent by the service itself (trust-anchor rotation), not through this API", req.kind))]
    };
    let deadline_secs = req.deadline_secs.unwrap_or(600);
    if !(1..=86_400).contains(&deadline_secs) {
        errors.push(FieldError::new("deadline_secs", "must be between 1 and 86400"));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let now = state.clock.now_ms();
    let created_by = format!("{}:{}", auth.actor.kind(), auth.actor.id());
    let command = Command::pending(auth.org_id, cluster, req.kind, params, created_by, now, deadline_secs * 1000);
    let mut tx = state.db.begin().await?;
    find(&mut tx, &auth, cluster).await?;
    let active = crate::domain::trust::AnchorState::Active;
    if command.kind == "rotate-issuer" && store::trust::anchor_in(&mut tx, auth.org_id, active).await?.is_none() {
        let detail = "the organization has no trust anchor to sign the issuer with; create one at /api/v1/trust-anchors".to_owned();
        return Err(ApiError::Conflict { kind: "no-trust-anchor", detail, field: Some("kind".into()) });
    }
    store::commands::insert(&mut tx, &command).await?;
    audit::record(
        &mut tx,
        auth.org_id,
        now,
        &auth.actor,
        "command.create",
        ("command", command.id.to_string()),
        serde_json::json!({ "cluster": cluster, "kind": command.kind }),
    )
    .await?;
    tx.commit().await?;
    crate::gateway::dispatch::command_created(&state, cluster).await;
    Ok((StatusCode::CREATED, Json(command.into())))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CommandsQuery {
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(format = Uuid)]
    cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CommandPage {
    pub items: Vec<CommandView>,
    pub next_cursor: Option<String>,
}

/// The cluster's commands, newest first.
#[utoipa::path(get, path = "/api/v1/clusters/{id}/commands", tag = "commands", params(("id" = ClusterId, Path, description = "Cluster id"), CommandsQuery),
    responses((status = 200, body = CommandPage), BadRequest, Unauthenticated, NotFound, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, cluster_id = %cluster))]
async fn list_commands(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath(cluster): ApiPath<ClusterId>,
    ApiQuery(q): ApiQuery<CommandsQuery>,
) -> Result<Json<CommandPage>, ApiError> {
    let limit = super::page_limit(q.limit, 50)?;
    let before =
        q.cursor.as_deref().map(|c| c.parse::<CommandId>().map_err(|_| ApiError::field("cursor", "is not a cursor returned by this API"))).transpose()?;
    let mut conn = state.db.pool.acquire().await?;
    find(&mut conn, &auth, cluster).await?;
    let rows = store::commands::list(&mut conn, auth.org_id, cluster, before, limit + 1).await?;
    let (rows, next_cursor) = super::into_page(rows, limit, |c| c.id.to_string());
    Ok(Json(CommandPage { items: rows.into_iter().map(Into::into).collect(), next_cursor }))
}

/// One command, with its result once the agent reported it.
#[utoipa::path(get, path = "/api/v1/clusters/{id}/commands/{command_id}", tag = "commands",
    params(("id" = ClusterId, Path, description = "Cluster id"), ("command_id" = CommandId, Path, description = "Command id")),
    responses((status = 200, body = CommandView), BadRequest, Unauthenticated, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, cluster_id = %cluster, command_id = %id))]
async fn get_command(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath((cluster, id)): ApiPath<(ClusterId, CommandId)>,
) -> Result<Json<CommandView>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    let command = store::commands::get(&mut conn, auth.org_id, cluster, id).await?.ok_or(ApiError::NotFound("command"))?;
    Ok(Json(command.into()))
}
