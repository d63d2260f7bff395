//! What a cluster's agent reported: inventory, golden metrics per minute, and events; and
//! revoking the agent's certificates.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::audit;
use super::auth::Principal;
use super::clusters::find;
use super::error::ApiError;
use super::problems::{BadRequest, Forbidden, Internal, Invalid, NotFound, Unauthenticated};
use super::extract::{ApiPath, ApiQuery};
use crate::app::AppState;
use crate::db::to_rfc3339;
use crate::domain::{ClusterId, Role};
use crate::store::{self, inventory::Facts, inventory::Pod, rollups::Event, rollups::MinuteRollup};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(inventory))
        .routes(routes!(metrics))
        .routes(routes!(events))
        .routes(routes!(revoke_agent))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkloadView {
    pub namespace: String,
    /// The owner, e.g. `Deployment/web`.
    pub workload: String,
    pub pods: u32,
    pub ready_pods: u32,
    /// Pods per proxy version.
    pub proxy_versions: BTreeMap<String, u32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InventoryView {
    /// When the agent last reported a change; absent before its first snapshot.
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
    pub facts: Facts,
    pub workloads: Vec<WorkloadView>,
    pub pods: Vec<Pod>,
}

/// The cluster's mesh as its agent last reported it.
#[utoipa::path(get, path = "/api/v1/clusters/{id}/inventory", tag = "clusters", params(("id" = ClusterId, Path, description = "Cluster id")),
    responses((status = 200, body = InventoryView), BadRequest, Unauthenticated, NotFound, Internal), security(("bearer" = [])))]
async fn inventory(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<ClusterId>) -> Result<Json<InventoryView>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    find(&mut conn, &auth, id).await?;
    let (facts, updated_at) = store::inventory::facts(&mut conn, auth.org_id, id).await?.map_or((Facts::default(), None), |(f, at)| (f, Some(at)));
    let pods = store::inventory::pods(&mut conn, auth.org_id, id).await?;
    let mut workloads: BTreeMap<(String, String), WorkloadView> = BTreeMap::new();
    for p in &pods {
        let w = workloads.entry((p.namespace.clone(), p.workload.clone())).or_insert_with(|| WorkloadView {
            namespace: p.namespace.clone(),
            workload: p.workload.clone(),
            pods: 0,
            ready_pods: 0,
            proxy_versions: BTreeMap::new(),
        });
        w.pods += 1;
        w.ready_pods += u32::from(p.ready);
        *w.proxy_versions.entry(p.proxy_version.clone()).or_default() += 1;
    }
    Ok(Json(InventoryView { updated_at: updated_at.map(to_rfc3339), facts, workloads: workloads.into_values().collect(), pods }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MetricsQuery {
    /// How far back, in minutes: 1 to 1440 (default 60).
    #[param(minimum = 1, maximum = 1440)]
    minutes: Option<u32>,
}

/// Golden metrics per workload per minute.
#[utoipa::path(get, path = "/api/v1/clusters/{id}/metrics", operation_id = "cluster_metrics", tag = "clusters", params(("id" = ClusterId, Path, description = "Cluster id"), MetricsQuery),
    responses((status = 200, body = Vec<MinuteRollup>), BadRequest, Unauthenticated, NotFound, Invalid, Internal), security(("bearer" = [])))]
async fn metrics(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath(id): ApiPath<ClusterId>,
    ApiQuery(q): ApiQuery<MetricsQuery>,
) -> Result<Json<Vec<MinuteRollup>>, ApiError> {
    let minutes = q.minutes.unwrap_or(60);
    if !(1..=1440).contains(&minutes) {
        return Err(ApiError::field("minutes", "must be between 1 and 1440"));
    }
    let mut conn = state.db.pool.acquire().await?;
    find(&mut conn, &auth, id).await?;
    let since = state.clock.now_ms() - i64::from(minutes) * 60_000;
    Ok(Json(store::rollups::minutes_since(&mut conn, auth.org_id, id, since).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// At most this many, newest first: 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
}

/// The cluster's recent events (Kubernetes warnings in meshed namespaces, proxy restarts).
#[utoipa::path(get, path = "/api/v1/clusters/{id}/events", tag = "clusters", params(("id" = ClusterId, Path, description = "Cluster id"), EventsQuery),
    responses((status = 200, body = Vec<Event>), BadRequest, Unauthenticated, NotFound, Invalid, Internal), security(("bearer" = [])))]
async fn events(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath(id): ApiPath<ClusterId>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let limit = super::page_limit(q.limit, 100)?;
    let mut conn = state.db.pool.acquire().await?;
    find(&mut conn, &auth, id).await?;
    Ok(Json(store::rollups::recent_events(&mut conn, auth.org_id, id, limit).await?))
}

/// Revokes the agent's certificates and cuts its stream; it must register again with a new
/// bootstrap token.
#[utoipa::path(post, path = "/api/v1/clusters/{id}/agent/revoke", tag = "clusters", params(("id" = ClusterId, Path, description = "Cluster id")),
    responses((status = 204), BadRequest, Unauthenticated, Forbidden, NotFound, Internal), security(("bearer" = [])))]
async fn revoke_agent(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<ClusterId>) -> Result<StatusCode, ApiError> {
    auth.require(Role::Admin)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    find(&mut tx, &auth, id).await?;
    let revoked = store::agents::revoke_all(&mut tx, auth.org_id, id, now).await?;
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "cluster.agent.revoke", ("cluster", id.to_string()), serde_json::json!({ "certificates": revoked })).await?;
    tx.commit().await?;
    crate::gateway::dispatch::agent_revoked(&state, id).await;
    Ok(StatusCode::NO_CONTENT)
}
