//! Rollouts of a mesh version over the organization's clusters. Today: the plan preview, the
//! waves a rollout would run and the clusters it would leave alone, without starting anything.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::Principal;
use super::error::{ApiError, FieldError};
use super::extract::ApiJson;
use super::problems::{Forbidden, Internal, Invalid, JsonBody, Unauthenticated};
use crate::app::AppState;
use crate::domain::labels::{LabelError, Selector};
use crate::domain::releases::parse_version;
use crate::domain::rollouts::{self, Candidate, Plan, WaveSpec, Waves};
use crate::domain::Role;
use crate::store::{self, clusters::ListQuery};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(plan_rollout))
}

/// A rollout as people ask for it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// A version in the release catalog.
    #[schema(example = "0.2.0")]
    pub target_version: String,
    /// The clusters it covers, by label (Kubernetes selector syntax); empty: every cluster.
    #[serde(default)]
    pub selector: String,
    #[serde(default)]
    pub waves: WaveSpec,
}

/// The waves a rollout would run, without starting it (admins).
#[utoipa::path(post, path = "/api/v1/rollouts/plan", tag = "upgrades", request_body = RolloutRequest,
    responses((status = 200, body = Plan), JsonBody, Unauthenticated, Forbidden, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn plan_rollout(State(state): State<AppState>, auth: Principal, ApiJson(req): ApiJson<RolloutRequest>) -> Result<Json<Plan>, ApiError> {
    auth.require(Role::Admin)?;
    let mut errors = Vec::new();
    let target = parse_version(&req.target_version).map_err(|e| errors.push(FieldError::new("target_version", e))).ok();
    let selector: Option<Selector> = req.selector.parse().map_err(|e: LabelError| errors.push(FieldError::new("selector", e.message))).ok();
    let waves = Waves::new(req.waves).map_err(|e| errors.extend(e.into_iter().map(|(f, m)| FieldError::new(f, m)))).ok();
    let catalog = state.releases.get(&state.db, state.clock.now_ms()).await?;
    if let Some(t) = target.as_ref().filter(|t| catalog.get(t).is_none()) {
        errors.push(FieldError::new("target_version", format!("{t} is not in the release catalog")));
    }
    let (Some(target), Some(selector), Some(waves), true) = (target, selector, waves, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let mut conn = state.db.pool.acquire().await?;
    let clusters = store::clusters::list(&mut conn, auth.org_id, &ListQuery { selector: &selector, status: None, after_name: None, limit: 100_000 }).await?;
    let versions = store::inventory::control_plane_versions(&mut conn, auth.org_id).await?;
    let policies = store::upgrade_policies::list(&mut conn, auth.org_id).await?;
    drop(conn);
    let candidates: Vec<Candidate> = clusters
        .iter()
        .map(|c| Candidate {
            id: c.id,
            name: &c.name,
            labels: &c.labels,
            control_plane: versions.get(&c.id).map(String::as_str).unwrap_or_default(),
            agent_version: c.agent_version.as_deref(),
        })
        .collect();
    Ok(Json(rollouts::plan(&catalog, &target, &candidates, &policies, &waves)))
}
