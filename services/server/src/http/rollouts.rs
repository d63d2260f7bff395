//! Rollouts of a mesh version over the organization's clusters: the plan preview (the waves a
//! rollout would run and the clusters it would leave alone), starting one, and steering it
//! (pause, resume, abort; skip or retry a cluster). The `rollouts` job runs them
//! (`crate::rollouts`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::Principal;
use super::error::{ApiError, FieldError};
use super::extract::ApiJson;
use super::extract::ApiPath;
use super::problems::{BadRequest, Conflict, Forbidden, Internal, Invalid, JsonBody, NotFound, Unauthenticated};
use crate::app::AppState;
use crate::db::to_rfc3339;
use crate::domain::labels::{LabelError, Selector};
use crate::domain::releases::parse_version;
use crate::domain::rollouts::{Phase, Plan, Rollout, RolloutState, Settings, Waves};
use crate::domain::{ClusterId, Role, RolloutId};
use crate::rollouts::start::{self, StartError, StartedBy};
use crate::store::{self, audit};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(plan_rollout))
        .routes(routes!(list_rollouts, start_rollout))
        .routes(routes!(get_rollout))
        .routes(routes!(act_on_rollout))
        .routes(routes!(act_on_cluster))
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
    pub settings: Settings,
}

/// Checks the request and plans it against the catalog, the policies and the clusters now.
async fn plan_for(state: &AppState, auth: &Principal, req: &RolloutRequest) -> Result<Plan, ApiError> {
    let mut errors = Vec::new();
    let target = parse_version(&req.target_version).map_err(|e| errors.push(FieldError::new("target_version", e))).ok();
    let selector: Option<Selector> = req.selector.parse().map_err(|e: LabelError| errors.push(FieldError::new("selector", e.message))).ok();
    let waves = Waves::new(req.settings.waves.clone()).map_err(|e| errors.extend(e.into_iter().map(|(f, m)| FieldError::new(format!("settings.{f}"), m)))).ok();
    errors.extend(req.settings.check().into_iter().map(|(f, m)| FieldError::new(format!("settings.{f}"), m)));
    let catalog = state.releases.get(&state.db, state.clock.now_ms()).await?;
    if let Some(t) = target.as_ref().filter(|t| catalog.get(t).is_none()) {
        errors.push(FieldError::new("target_version", format!("{t} is not in the release catalog")));
    }
    let (Some(target), Some(selector), Some(waves), true) = (target, selector, waves, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    Ok(start::plan(state, auth.org_id, &catalog, &target, &selector, &waves, |_| true).await?)
}

/// The waves a rollout would run, without starting it (admins).
#[utoipa::path(post, path = "/api/v1/rollouts/plan", tag = "upgrades", request_body = RolloutRequest,
    responses((status = 200, body = Plan), JsonBody, Unauthenticated, Forbidden, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn plan_rollout(State(state): State<AppState>, auth: Principal, ApiJson(req): ApiJson<RolloutRequest>) -> Result<Json<Plan>, ApiError> {
    auth.require(Role::Admin)?;
    Ok(Json(plan_for(&state, &auth, &req).await?))
}

async fn find(conn: &mut store::Conn, auth: &Principal, id: RolloutId) -> Result<Rollout, ApiError> {
    store::rollouts::get(conn, auth.org_id, id).await?.ok_or(ApiError::NotFound("rollout"))
}

/// Starts a rollout (admins): planned as the preview shows, then run by the service. A
/// cluster already in a running or paused rollout cannot be in a second one.
#[utoipa::path(post, path = "/api/v1/rollouts", tag = "upgrades", request_body = RolloutRequest,
    responses((status = 201, body = Rollout), JsonBody, Unauthenticated, Forbidden, Conflict, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn start_rollout(State(state): State<AppState>, auth: Principal, ApiJson(req): ApiJson<RolloutRequest>) -> Result<(StatusCode, Json<Rollout>), ApiError> {
    auth.require(Role::Admin)?;
    let plan = plan_for(&state, &auth, &req).await?;
    let rollout =
        start::start(&state, auth.org_id, plan, req.selector.clone(), req.settings.clone(), StartedBy::Person(&auth.actor)).await.map_err(|e| match e {
            StartError::Busy(_) => ApiError::Conflict { kind: "cluster-in-rollout", detail: e.to_string(), field: Some("selector".into()) },
            StartError::Db(e) => e.into(),
        })?;
    Ok((StatusCode::CREATED, Json(rollout)))
}

/// The organization's rollouts, newest first (the latest 100).
#[utoipa::path(get, path = "/api/v1/rollouts", tag = "upgrades",
    responses((status = 200, body = Vec<Rollout>), Unauthenticated, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn list_rollouts(State(state): State<AppState>, auth: Principal) -> Result<Json<Vec<Rollout>>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    Ok(Json(store::rollouts::list(&mut conn, auth.org_id, 100).await?))
}

/// One rollout: its waves, each cluster's phase, step message, and the gates' measured values.
#[utoipa::path(get, path = "/api/v1/rollouts/{id}", tag = "upgrades",
    params(("id" = RolloutId, Path, description = "Rollout id")),
    responses((status = 200, body = Rollout), BadRequest, Unauthenticated, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, rollout_id = %id))]
async fn get_rollout(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<RolloutId>) -> Result<Json<Rollout>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    Ok(Json(find(&mut conn, &auth, id).await?))
}

/// What an admin can do to a rollout.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RolloutAction {
    Pause,
    Resume,
    Abort,
}

/// What an admin can do to one cluster of a rollout.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClusterAction {
    /// Leave it out of the rest of the rollout (not while a step of it runs).
    Skip,
    /// Run it again from its first hop, after a rollback.
    Retry,
}

/// A cluster whose upgrade an admin gave up (skipped, or its rollout aborted): its automatic
/// policy does not propose that version to it again, and its events say so.
struct GivenUp {
    cluster: ClusterId,
    reason: &'static str,
    message: String,
}

/// What an admin's change to a rollout did: its audit action and details, and the clusters
/// it gave up.
struct Change {
    action: String,
    details: serde_json::Value,
    given_up: Vec<GivenUp>,
}

/// Applies an admin's change to a rollout and saves it; the job's next look starts from it.
/// `change` refuses, or says what it did. The save succeeds only if the rollout did not move
/// meanwhile; if the job saved a step in between, the change is applied again to the rollout
/// as it is now (and may then be refused), so an admin never sees a conflict that is only the
/// job's.
async fn apply_change(
    state: &AppState,
    auth: &Principal,
    id: RolloutId,
    mut change: impl FnMut(&mut Rollout) -> Result<Change, ApiError>,
) -> Result<Json<Rollout>, ApiError> {
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let mut r = find(&mut *state.db.pool.acquire().await?, auth, id).await?;
        let read = r.updated_at.timestamp_millis();
        let Change { action, details, given_up } = change(&mut r)?;
        let now = state.clock.now_ms().max(read + 1);
        r.updated_at = to_rfc3339(now);
        let mut tx = state.db.begin().await?;
        if !store::rollouts::save(&mut tx, &r, read).await? {
            continue;
        }
        audit::record(&mut tx, auth.org_id, now, &auth.actor, &action, ("rollout", r.id.to_string()), details).await?;
        let mut events = Vec::with_capacity(given_up.len());
        for g in &given_up {
            store::upgrade_declines::record(&mut tx, auth.org_id, g.cluster, &r.target_version, r.id, &g.message, now).await?;
            let message = format!("{}{}", g.message, crate::rollouts::not_again(&r.target_version));
            events.push((auth.org_id, g.cluster, crate::rollouts::event(&r, ("Warning", g.reason), &message, now)));
        }
        store::rollups::add_events(&mut tx, &events).await?;
        tx.commit().await?;
        return Ok(Json(r));
    }
    Err(ApiError::Conflict { kind: "rollout-changed", detail: "the rollout kept moving on meanwhile; read it and try again".into(), field: None })
}

/// Pauses, resumes or aborts a rollout (admins). Paused, a cluster being rolled back still
/// finishes its rollback; aborted, nothing more is sent (steps under way finish in the
/// cluster, and clusters keep the version they reached).
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/{action}", tag = "upgrades",
    params(("id" = RolloutId, Path, description = "Rollout id"), ("action" = RolloutAction, Path, description = "pause, resume or abort")),
    responses((status = 200, body = Rollout), BadRequest, Unauthenticated, Forbidden, NotFound, Conflict, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, rollout_id = %id))]
async fn act_on_rollout(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath((id, action)): ApiPath<(RolloutId, RolloutAction)>,
) -> Result<Json<Rollout>, ApiError> {
    auth.require(Role::Admin)?;
    apply_change(&state, &auth, id, |r| {
        let from = r.state;
        r.state = match (action, r.state) {
            (RolloutAction::Pause, RolloutState::Running) => RolloutState::Paused,
            (RolloutAction::Resume, RolloutState::Paused) => RolloutState::Running,
            (RolloutAction::Abort, RolloutState::Running | RolloutState::Paused) => RolloutState::Aborted,
            (_, state) => {
                return Err(ApiError::Conflict {
                    kind: "rollout-state",
                    detail: format!("the rollout is {state:?}, so it cannot be {action:?}d").to_lowercase(),
                    field: None,
                });
            }
        };
        r.reason = match action {
            RolloutAction::Pause => Some(format!("paused by {}", auth.actor.id())),
            RolloutAction::Abort => Some(format!("aborted by {}", auth.actor.id())),
            RolloutAction::Resume => None,
        };
        let details = serde_json::json!({ "from": from, "to": r.state });
        // Aborted, the clusters it had not finished are given up.
        let given_up = match action {
            RolloutAction::Abort => r
                .clusters
                .iter()
                .filter(|c| !c.phase.settled())
                .map(|c| GivenUp { cluster: c.id, reason: "RolloutAborted", message: format!("the rollout was aborted by {}", auth.actor.id()) })
                .collect(),
            _ => Vec::new(),
        };
        Ok(Change { action: format!("rollout.{}", format!("{action:?}").to_lowercase()), details, given_up })
    })
    .await
}

/// Skips a cluster, or retries one that was rolled back (admins).
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/clusters/{cluster_id}/{action}", tag = "upgrades",
    params(("id" = RolloutId, Path, description = "Rollout id"), ("cluster_id" = ClusterId, Path, description = "Cluster id"),
        ("action" = ClusterAction, Path, description = "skip or retry")),
    responses((status = 200, body = Rollout), BadRequest, Unauthenticated, Forbidden, NotFound, Conflict, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, rollout_id = %id, cluster_id = %cluster))]
async fn act_on_cluster(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath((id, cluster, action)): ApiPath<(RolloutId, ClusterId, ClusterAction)>,
) -> Result<Json<Rollout>, ApiError> {
    auth.require(Role::Admin)?;
    apply_change(&state, &auth, id, |r| {
        let now = to_rfc3339(state.clock.now_ms());
        if matches!(r.state, RolloutState::Completed | RolloutState::Aborted) {
            return Err(ApiError::Conflict { kind: "rollout-state", detail: "the rollout is over".into(), field: None });
        }
        let c = r.clusters.iter_mut().find(|c| c.id == cluster).ok_or(ApiError::NotFound("cluster in this rollout"))?;
        let from = c.phase;
        match (action, c.phase) {
            (ClusterAction::Skip, Phase::Pending | Phase::RolledBack) => {
                c.phase = Phase::Skipped;
                c.message = format!("skipped by {}", auth.actor.id());
            }
            (ClusterAction::Retry, Phase::RolledBack | Phase::Skipped) => {
                c.phase = Phase::Pending;
                c.hop = 0;
                c.command_id = None;
                c.measured = None;
                c.message = format!("retried by {}", auth.actor.id());
            }
            (_, phase) => {
                let detail = format!("the cluster is {phase:?}: skip a pending or rolled-back cluster, retry a rolled-back or skipped one").to_lowercase();
                return Err(ApiError::Conflict { kind: "cluster-phase", detail, field: None });
            }
        }
        c.since = now;
        // A retried cluster of an earlier wave runs again in the current one.
        if matches!(action, ClusterAction::Retry) {
            c.wave = c.wave.max(r.wave);
            r.wave_done_at = None;
        }
        let details = serde_json::json!({ "cluster": cluster, "from": from, "to": r.clusters.iter().find(|c| c.id == cluster).map(|c| c.phase) });
        let given_up = match action {
            ClusterAction::Skip => vec![GivenUp { cluster, reason: "RolloutSkipped", message: format!("skipped by {}", auth.actor.id()) }],
            ClusterAction::Retry => Vec::new(),
        };
        Ok(Change { action: format!("rollout.cluster.{}", format!("{action:?}").to_lowercase()), details, given_up })
    })
    .await
}
