//! Fleet health as data: each cluster's health and findings, and the organization's summary,
//! exactly as the dashboard's overview assesses them (`crate::fleet`, rules in
//! `domain::health`). Alert rules and the CLI read these.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::Principal;
use super::clusters::ClusterStatus;
use super::error::ApiError;
use super::extract::ApiPath;
use super::problems::{BadRequest, Internal, NotFound, Unauthenticated};
use crate::app::AppState;
use crate::db::to_rfc3339;
use crate::domain::health::{Health, Severity};
use crate::domain::ClusterId;
use crate::fleet::{FleetCache, Row};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(cluster_health)).routes(routes!(fleet_health))
}

/// Something worth knowing about a cluster.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Finding {
    /// The check that found it: `agent`, `certificate_expiry`, `success_rate`,
    /// `control_plane`, `clock_skew`, `proxy_versions` or `version_skew`.
    #[schema(example = "certificate_expiry")]
    pub check: String,
    pub severity: Severity,
    /// The health it gives its cluster; null for findings that only inform.
    pub health: Option<Health>,
    #[schema(example = "the issuer certificate expires in 2 d 4 h")]
    pub message: String,
    /// When the condition began: from the data where it tells (the agent last heard from, a
    /// certificate's expiry), otherwise when the service first saw it.
    pub since: DateTime<Utc>,
    /// What it concerns: `Agent`, `Cluster` (its traffic), `ControlPlane`, `Proxies` or
    /// `Certificate/<role>`.
    #[schema(example = "Certificate/issuer")]
    pub object: String,
}

/// A cluster's health and its findings, the one that decides the health first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterHealth {
    pub cluster_id: ClusterId,
    pub name: String,
    pub status: ClusterStatus,
    pub health: Health,
    pub findings: Vec<Finding>,
    /// When the assessment was made (at most a few seconds ago).
    pub evaluated_at: DateTime<Utc>,
}

/// Clusters per health level.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct HealthSummary {
    pub critical: u64,
    pub degraded: u64,
    pub expiring: u64,
    pub pending: u64,
    pub healthy: u64,
}

/// The organization's fleet health.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FleetHealth {
    pub summary: HealthSummary,
    /// Every cluster with at least one finding, worst first (then by name).
    pub clusters: Vec<ClusterHealth>,
    pub evaluated_at: DateTime<Utc>,
}

fn view(r: &Row, at: i64) -> Result<ClusterHealth, ApiError> {
    let status = ClusterStatus::parse(r.cluster.id, &r.status)?;
    let findings = r
        .findings
        .iter()
        .map(|(f, since)| Finding {
            check: f.check().to_owned(),
            severity: f.severity(),
            health: f.health(),
            message: f.message(at),
            since: to_rfc3339(*since),
            object: f.object(),
        })
        .collect();
    Ok(ClusterHealth { cluster_id: r.cluster.id, name: r.cluster.name.clone(), status, health: r.health, findings, evaluated_at: to_rfc3339(at) })
}

/// A cluster's health and findings.
#[utoipa::path(get, path = "/api/v1/clusters/{id}/health", tag = "health", params(("id" = ClusterId, Path, description = "Cluster id")),
    responses((status = 200, body = ClusterHealth), BadRequest, Unauthenticated, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, cluster_id = %id))]
async fn cluster_health(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<ClusterId>) -> Result<Json<ClusterHealth>, ApiError> {
    let snapshot = FleetCache::snapshot(&state, auth.org_id).await?;
    match snapshot.rows.iter().find(|r| r.cluster.id == id) {
        Some(row) => Ok(Json(view(row, snapshot.at)?)),
        // Created a moment ago, or none of ours: only the first earns a fresh assessment.
        None => {
            let mut conn = state.db.pool.acquire().await?;
            super::clusters::find(&mut conn, &auth, id).await?;
            drop(conn);
            state.fleet_cache.invalidate(auth.org_id);
            let snapshot = FleetCache::snapshot(&state, auth.org_id).await?;
            let row = snapshot.rows.iter().find(|r| r.cluster.id == id).ok_or(ApiError::NotFound("cluster"))?;
            Ok(Json(view(row, snapshot.at)?))
        }
    }
}

/// The organization's fleet health: how many clusters are at each level, and every cluster
/// with findings.
#[utoipa::path(get, path = "/api/v1/fleet/health", tag = "health",
    responses((status = 200, body = FleetHealth), Unauthenticated, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn fleet_health(State(state): State<AppState>, auth: Principal) -> Result<Json<FleetHealth>, ApiError> {
    let snapshot = FleetCache::snapshot(&state, auth.org_id).await?;
    let mut summary = HealthSummary::default();
    for r in &snapshot.rows {
        *match r.health {
            Health::Critical => &mut summary.critical,
            Health::Degraded => &mut summary.degraded,
            Health::Expiring => &mut summary.expiring,
            Health::Pending => &mut summary.pending,
            Health::Healthy => &mut summary.healthy,
        } += 1;
    }
    let clusters = snapshot.rows.iter().filter(|r| !r.findings.is_empty()).map(|r| view(r, snapshot.at)).collect::<Result<_, _>>()?;
    Ok(Json(FleetHealth { summary, clusters, evaluated_at: to_rfc3339(snapshot.at) }))
}
