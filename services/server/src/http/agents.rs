//! What a cluster's agent reported: inventory, golden metrics per minute, and events; and
//! revoking the agent's certificates.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::Principal;
use super::clusters::find;
use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery};
use super::problems::{BadRequest, Forbidden, Internal, Invalid, NotFound, Unauthenticated};
use crate::app::AppState;
use crate::db::to_rfc3339;
use crate::domain::{ClusterId, Role};
use crate::store;
use crate::store::audit;
use crate::store::inventory::{CertificateInfo, ControlPlane, Facts, Pod, UninjectedPods};
use crate::store::rollups::{Event, MinuteKey, MinuteRollup};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(inventory)).routes(routes!(metrics)).routes(routes!(events)).routes(routes!(revoke_agent))
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

/// A certificate of the mesh as the agent reported it (metadata only).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CertificateView {
    /// `issuer` or `trust-anchor`.
    pub role: String,
    pub subject: String,
    pub sans: Vec<String>,
    pub not_before: chrono::DateTime<chrono::Utc>,
    pub not_after: chrono::DateTime<chrono::Utc>,
    pub sha256_fingerprint: String,
}

impl From<CertificateInfo> for CertificateView {
    fn from(c: CertificateInfo) -> Self {
        CertificateView {
            role: c.role,
            subject: c.subject,
            sans: c.sans,
            not_before: to_rfc3339(c.not_before),
            not_after: to_rfc3339(c.not_after),
            sha256_fingerprint: c.sha256_fingerprint,
        }
    }
}

/// Cluster-wide facts of the inventory.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FactsView {
    pub kubernetes_version: String,
    pub node_count: u32,
    pub control_plane: ControlPlane,
    pub namespaces: Vec<String>,
    pub certificates: Vec<CertificateView>,
    /// Injection coverage: namespaces with injection on whose pods run without the proxy.
    pub pods_without_proxy: Vec<UninjectedPods>,
}

impl From<Facts> for FactsView {
    fn from(f: Facts) -> Self {
        FactsView {
            kubernetes_version: f.kubernetes_version,
            node_count: f.node_count,
            control_plane: f.control_plane,
            namespaces: f.namespaces,
            certificates: f.certificates.into_iter().map(Into::into).collect(),
            pods_without_proxy: f.pods_without_proxy,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InventoryView {
    /// When the agent last reported a change; absent before its first snapshot.
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
    pub facts: FactsView,
    pub workloads: Vec<WorkloadView>,
    pub pods: Vec<Pod>,
}

/// The cluster's mesh as its agent last reported it.
#[utoipa::path(get, path = "/api/v1/clusters/{id}/inventory", tag = "clusters", params(("id" = ClusterId, Path, description = "Cluster id")),
    responses((status = 200, body = InventoryView), BadRequest, Unauthenticated, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, cluster_id = %id))]
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
    Ok(Json(InventoryView { updated_at: updated_at.map(to_rfc3339), facts: facts.into(), workloads: workloads.into_values().collect(), pods }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MetricsQuery {
    /// How far back, in minutes: 1 to 1440 (default 60).
    #[param(minimum = 1, maximum = 1440)]
    minutes: Option<u32>,
    /// Page size, 1 to 500 (default 500).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page. Opaque: a string the server did not issue is a 422.
    #[param(pattern = "^[A-Za-z0-9_-]*$")]
    cursor: Option<String>,
}

/// One workload's golden metrics over one minute.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MinuteView {
    pub namespace: String,
    pub workload: String,
    /// Start of the minute.
    pub minute: chrono::DateTime<chrono::Utc>,
    pub requests: i64,
    pub failures: i64,
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub latency_p99_ms: f64,
}

impl From<MinuteRollup> for MinuteView {
    fn from(m: MinuteRollup) -> Self {
        MinuteView {
            namespace: m.namespace,
            workload: m.workload,
            minute: to_rfc3339(m.minute),
            requests: m.requests,
            failures: m.failures,
            latency_p50_ms: m.latency_p50_ms,
            latency_p95_ms: m.latency_p95_ms,
            latency_p99_ms: m.latency_p99_ms,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MetricsPage {
    /// Ordered by namespace, workload, minute.
    pub items: Vec<MinuteView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A cursor: the key of the last row of a page, as base64url JSON (opaque to clients).
fn encode_cursor(key: &impl Serialize) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(key).expect("cursor keys serialize"))
}

fn decode_cursor<T: serde::de::DeserializeOwned>(cursor: Option<&str>) -> Result<Option<T>, ApiError> {
    // An empty cursor is no cursor: the first page.
    cursor
        .filter(|c| !c.is_empty())
        .map(|c| {
            URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| ApiError::field("cursor", "is not a cursor returned by this API"))
        })
        .transpose()
}

/// Golden metrics per workload per minute, a page at a time.
#[utoipa::path(get, path = "/api/v1/clusters/{id}/metrics", operation_id = "cluster_metrics", tag = "clusters", params(("id" = ClusterId, Path, description = "Cluster id"), MetricsQuery),
    responses((status = 200, body = MetricsPage), BadRequest, Unauthenticated, NotFound, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, cluster_id = %id))]
async fn metrics(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath(id): ApiPath<ClusterId>,
    ApiQuery(q): ApiQuery<MetricsQuery>,
) -> Result<Json<MetricsPage>, ApiError> {
    let minutes = q.minutes.unwrap_or(60);
    if !(1..=1440).contains(&minutes) {
        return Err(ApiError::field("minutes", "must be between 1 and 1440"));
    }
    let limit = super::page_limit(q.limit, 500)?;
    let after: Option<MinuteKey> = decode_cursor(q.cursor.as_deref())?;
    let mut conn = state.db.pool.acquire().await?;
    find(&mut conn, &auth, id).await?;
    let since = state.clock.now_ms() - i64::from(minutes) * 60_000;
    let rows = store::rollups::minutes_page(&mut conn, auth.org_id, id, since, after.as_ref(), Some(limit + 1)).await?;
    let (rows, next_cursor) = super::into_page(rows, limit, |m| encode_cursor(&(&m.namespace, &m.workload, m.minute)));
    Ok(Json(MetricsPage { items: rows.into_iter().map(Into::into).collect(), next_cursor }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Page size, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page. Opaque: a string the server did not issue is a 422.
    #[param(pattern = "^[A-Za-z0-9_-]*$")]
    cursor: Option<String>,
}

/// An event the agent reported.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    pub id: String,
    pub at: chrono::DateTime<chrono::Utc>,
    /// `Warning`, `Normal` or `ProxyRestart`.
    #[serde(rename = "type")]
    pub kind: String,
    pub namespace: String,
    pub object: String,
    pub reason: String,
    pub message: String,
}

impl From<Event> for EventView {
    fn from(e: Event) -> Self {
        EventView { id: e.id, at: to_rfc3339(e.at), kind: e.kind, namespace: e.namespace, object: e.object, reason: e.reason, message: e.message }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    /// Newest first.
    pub items: Vec<EventView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The cluster's events (Kubernetes warnings in meshed namespaces, proxy restarts), newest
/// first, a page at a time.
#[utoipa::path(get, path = "/api/v1/clusters/{id}/events", tag = "clusters", params(("id" = ClusterId, Path, description = "Cluster id"), EventsQuery),
    responses((status = 200, body = EventPage), BadRequest, Unauthenticated, NotFound, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, cluster_id = %id))]
async fn events(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath(id): ApiPath<ClusterId>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let limit = super::page_limit(q.limit, 100)?;
    let before: Option<(i64, String)> = decode_cursor(q.cursor.as_deref())?;
    let mut conn = state.db.pool.acquire().await?;
    find(&mut conn, &auth, id).await?;
    let rows = store::rollups::events_page(&mut conn, auth.org_id, id, before.as_ref().map(|(at, id)| (*at, id.as_str())), limit + 1).await?;
    let (rows, next_cursor) = super::into_page(rows, limit, |e| encode_cursor(&(e.at, &e.id)));
    Ok(Json(EventPage { items: rows.into_iter().map(Into::into).collect(), next_cursor }))
}

/// Revokes the agent's certificates and cuts its stream; it must register again with a new
/// bootstrap token.
#[utoipa::path(post, path = "/api/v1/clusters/{id}/agent/revoke", tag = "clusters", params(("id" = ClusterId, Path, description = "Cluster id")),
    responses((status = 204), BadRequest, Unauthenticated, Forbidden, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, cluster_id = %id))]
async fn revoke_agent(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<ClusterId>) -> Result<StatusCode, ApiError> {
    auth.require(Role::Admin)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    find(&mut tx, &auth, id).await?;
    let revoked = store::agents::revoke_all(&mut tx, auth.org_id, id, now).await?;
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "cluster.agent.revoke", ("cluster", id.to_string()), serde_json::json!({ "certificates": revoked }))
        .await?;
    tx.commit().await?;
    crate::gateway::dispatch::agent_revoked(&state, id).await;
    Ok(StatusCode::NO_CONTENT)
}
