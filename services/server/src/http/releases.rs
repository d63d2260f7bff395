//! The release catalog: everyone reads it and the upgrades open to each of their clusters;
//! service operators (the `operator` bearer token) add releases and yank or annotate them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::{Operator, Principal};
use super::error::{ApiError, FieldError};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::problems::{BadRequest, Conflict, Forbidden, Internal, Invalid, JsonBody, NotFound, Unauthenticated};
use crate::app::AppState;
use crate::domain::releases::{agent_blocks, parse_version, Catalog, Channel, Release, ReleaseSpec, Support};
use crate::domain::upgrade_policies::{self, Mode, UpgradePolicy};
use crate::domain::{ClusterId, UpgradePolicyId};
use crate::store;
use crate::store::clusters::Cluster;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_releases))
        .routes(routes!(get_release))
        .routes(routes!(cluster_upgrades))
        .routes(routes!(add_release))
        .routes(routes!(edit_release))
}

/// A mesh version the service knows.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReleaseView {
    pub version: String,
    pub channel: Channel,
    #[schema(value_type = String, format = Date)]
    pub released_on: chrono::NaiveDate,
    pub controller_image: String,
    pub proxy_image: String,
    /// The oldest agent that can carry out an upgrade to it.
    pub min_agent_version: String,
    pub notes: String,
    pub cautions: Vec<String>,
    /// Withdrawn: never offered as an upgrade.
    pub yanked: bool,
}

impl From<&Release> for ReleaseView {
    fn from(r: &Release) -> ReleaseView {
        ReleaseView {
            version: r.version.to_string(),
            channel: r.channel,
            released_on: r.released_on,
            controller_image: r.controller_image.clone(),
            proxy_image: r.proxy_image.clone(),
            min_agent_version: r.min_agent_version.to_string(),
            notes: r.notes.clone(),
            cautions: r.cautions.clone(),
            yanked: r.yanked,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReleaseList {
    /// Newest first.
    pub items: Vec<ReleaseView>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReleaseQuery {
    /// Only releases a cluster on this channel may run (`stable`: stable ones; `edge`: all).
    #[param(inline)]
    channel: Option<Channel>,
    /// Include yanked releases (default false).
    include_yanked: Option<bool>,
}

async fn catalog(state: &AppState) -> Result<std::sync::Arc<Catalog>, ApiError> {
    Ok(state.releases.get(&state.db, state.clock.now_ms()).await?)
}

fn invalid(errors: Vec<(String, String)>) -> ApiError {
    ApiError::Validation(errors.into_iter().map(|(f, m)| FieldError::new(f, m)).collect())
}

fn version_param(raw: &str) -> Result<semver::Version, ApiError> {
    parse_version(raw).map_err(|e| ApiError::BadRequest { detail: e, field: Some("version".into()) })
}

/// The release catalog, newest first.
#[utoipa::path(get, path = "/api/v1/releases", tag = "releases", params(ReleaseQuery),
    responses((status = 200, body = ReleaseList), BadRequest, Unauthenticated, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all)]
async fn list_releases(State(state): State<AppState>, _auth: Principal, ApiQuery(q): ApiQuery<ReleaseQuery>) -> Result<Json<ReleaseList>, ApiError> {
    let catalog = catalog(&state).await?;
    let items = catalog
        .releases()
        .iter()
        .rev()
        .filter(|r| q.include_yanked.unwrap_or(false) || !r.yanked)
        .filter(|r| q.channel.is_none_or(|c| c.admits(r.channel)))
        .map(ReleaseView::from)
        .collect();
    Ok(Json(ReleaseList { items }))
}

/// One release of the catalog.
#[utoipa::path(get, path = "/api/v1/releases/{version}", tag = "releases",
    params(("version" = String, Path, description = "A semantic version")),
    responses((status = 200, body = ReleaseView), BadRequest, Unauthenticated, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all)]
async fn get_release(State(state): State<AppState>, _auth: Principal, ApiPath(version): ApiPath<String>) -> Result<Json<ReleaseView>, ApiError> {
    let version = version_param(&version)?;
    let catalog = catalog(&state).await?;
    catalog.get(&version).map(|r| Json(ReleaseView::from(r))).ok_or(ApiError::NotFound("release"))
}

/// How the catalog sees the version a control plane runs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SupportView {
    Supported,
    Yanked,
    Unknown,
    Unparseable,
}

impl From<&Support> for SupportView {
    fn from(s: &Support) -> SupportView {
        match s {
            Support::Supported => SupportView::Supported,
            Support::Yanked => SupportView::Yanked,
            Support::Unknown => SupportView::Unknown,
            Support::Unparseable => SupportView::Unparseable,
        }
    }
}

/// A release the cluster can be upgraded to, and how.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AvailableUpgrade {
    pub release: ReleaseView,
    /// The versions to pass through in turn, the target last: each hop upgrades the control
    /// plane, then the data plane.
    pub hops: Vec<String>,
    /// Every caution of every hop.
    pub cautions: Vec<String>,
    /// Why it cannot start now (the agent is too old for a hop, or its version is unknown).
    pub blocked: Option<String>,
}

/// Which upgrade policy.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PolicyRef {
    pub id: UpgradePolicyId,
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClusterUpgrades {
    pub cluster_id: ClusterId,
    /// The control plane's version as the agent reported it.
    pub control_plane_version: Option<String>,
    /// How the catalog sees that version.
    pub support: Option<SupportView>,
    pub agent_version: Option<String>,
    /// The upgrade policy that governs the cluster (none: the defaults).
    pub policy: Option<PolicyRef>,
    /// The channel the cluster follows (its policy's; default stable).
    pub channel: Channel,
    pub mode: Mode,
    /// The policy keeps the cluster at this version: the only upgrade offered.
    pub pinned_version: Option<String>,
    /// The policy leaves the cluster out of rollouts.
    pub excluded: bool,
    /// When an upgrade may next start (now, when a window is open or the policy has none).
    pub next_window: Option<chrono::DateTime<chrono::Utc>>,
    /// Newest first; empty when the cluster is at the newest release it can reach, or its
    /// version is not one the catalog can plan from.
    pub available: Vec<AvailableUpgrade>,
}

/// The upgrades open to a cluster, each with its plan of hops.
#[utoipa::path(get, path = "/api/v1/clusters/{id}/upgrades", tag = "releases",
    params(("id" = ClusterId, Path, description = "Cluster id")),
    responses((status = 200, body = ClusterUpgrades), BadRequest, Unauthenticated, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, cluster_id = %id))]
async fn cluster_upgrades(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<ClusterId>) -> Result<Json<ClusterUpgrades>, ApiError> {
    let now = state.clock.now_ms();
    let mut conn = state.db.pool.acquire().await?;
    let cluster = super::clusters::find(&mut conn, &auth, id).await?;
    let facts = store::inventory::facts(&mut conn, auth.org_id, id).await?.map(|(f, _)| f);
    let policies = store::upgrade_policies::list(&mut conn, auth.org_id).await?;
    drop(conn);
    let catalog = catalog(&state).await?;
    let reported = facts.map(|f| f.control_plane.version).filter(|v| !v.is_empty());
    Ok(Json(upgrades_of(&catalog, &cluster, reported, &policies, now)))
}

/// The upgrades open to `cluster`, whose control plane reported `reported`, under the
/// organization's `policies` at `now`: what the API answers and the dashboard's Upgrades page shows.
pub fn upgrades_of(catalog: &Catalog, cluster: &Cluster, reported: Option<String>, policies: &[UpgradePolicy], now: i64) -> ClusterUpgrades {
    let policy = upgrade_policies::effective(policies, &cluster.labels);
    let channel = policy.map(|p| p.spec.channel).unwrap_or_default();
    let pinned = policy.and_then(|p| p.pinned.as_ref());
    let available = match reported.as_deref().map(parse_version) {
        Some(Ok(from)) => catalog
            .upgrades(&from, channel)
            .into_iter()
            .filter(|(target, _)| pinned.is_none_or(|pin| target.version == *pin))
            .map(|(target, hops)| {
                let blocked = agent_blocks(&hops, cluster.agent_version.as_deref());
                AvailableUpgrade {
                    release: target.into(),
                    hops: hops.iter().map(|h| h.version.to_string()).collect(),
                    cautions: hops.iter().flat_map(|h| h.cautions.iter().map(|c| format!("{}: {c}", h.version))).collect(),
                    blocked,
                }
            })
            .collect(),
        _ => Vec::new(),
    };
    ClusterUpgrades {
        cluster_id: cluster.id,
        support: reported.as_deref().and_then(|v| catalog.support(v)).as_ref().map(SupportView::from),
        control_plane_version: reported,
        agent_version: cluster.agent_version.clone(),
        policy: policy.map(|p| PolicyRef { id: p.id, name: p.spec.name.clone() }),
        channel,
        mode: policy.map(|p| p.spec.mode).unwrap_or_default(),
        pinned_version: pinned.map(ToString::to_string),
        excluded: policy.is_some_and(|p| p.spec.excluded),
        next_window: policy.map_or(Some(now), |p| p.next_opening(now)).map(crate::db::to_rfc3339),
        available,
    }
}

/// Adds a release to the catalog (service operators).
#[utoipa::path(post, path = "/api/v1/operator/releases", tag = "releases", request_body = ReleaseSpec,
    responses((status = 201, body = ReleaseView), JsonBody, Unauthenticated, Forbidden, Conflict, Invalid, Internal), security(("operator" = [])))]
#[tracing::instrument(skip_all)]
async fn add_release(State(state): State<AppState>, _op: Operator, ApiJson(spec): ApiJson<ReleaseSpec>) -> Result<(StatusCode, Json<ReleaseView>), ApiError> {
    let release = spec.parse().map_err(invalid)?;
    let mut conn = state.db.pool.acquire().await?;
    if !store::releases::save(&mut conn, &release, "api", state.clock.now_ms(), false).await? {
        return Err(ApiError::Conflict {
            kind: "release-exists",
            detail: format!("the catalog already holds {}", release.version),
            field: Some("version".into()),
        });
    }
    state.releases.invalidate();
    tracing::info!(version = %release.version, channel = release.channel.as_str(), "release added to the catalog");
    Ok((StatusCode::CREATED, Json(ReleaseView::from(&release))))
}

/// What an operator may change of a published release.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditRelease {
    pub yanked: Option<bool>,
    pub notes: Option<String>,
    pub cautions: Option<Vec<String>>,
}

/// Yanks (or restores) a release, or changes its notes and cautions (service operators).
#[utoipa::path(patch, path = "/api/v1/operator/releases/{version}", tag = "releases", request_body = EditRelease,
    params(("version" = String, Path, description = "A semantic version")),
    responses((status = 200, body = ReleaseView), JsonBody, Unauthenticated, Forbidden, NotFound, Invalid, Internal), security(("operator" = [])))]
#[tracing::instrument(skip_all)]
async fn edit_release(
    State(state): State<AppState>,
    _op: Operator,
    ApiPath(version): ApiPath<String>,
    ApiJson(edit): ApiJson<EditRelease>,
) -> Result<Json<ReleaseView>, ApiError> {
    let version = version_param(&version)?;
    state.releases.invalidate();
    let current = catalog(&state).await?.get(&version).cloned().ok_or(ApiError::NotFound("release"))?;
    let mut spec = ReleaseSpec::from(&current);
    spec.yanked = edit.yanked.unwrap_or(spec.yanked);
    spec.notes = edit.notes.unwrap_or(spec.notes);
    spec.cautions = edit.cautions.unwrap_or(spec.cautions);
    let release = spec.parse().map_err(invalid)?;
    let mut conn = state.db.pool.acquire().await?;
    store::releases::save(&mut conn, &release, "api", state.clock.now_ms(), true).await?;
    state.releases.invalidate();
    tracing::info!(version = %release.version, yanked = release.yanked, "release changed in the catalog");
    Ok(Json(ReleaseView::from(&release)))
}
