//! Clusters of the caller's organization: create (with a bootstrap token), list with label
//! selectors and cursors, get, relabel, delete, re-issue the bootstrap token, and render the
//! install manifest that connects the cluster.

use std::borrow::Cow;

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::{Deliberate, Principal};
use super::error::{ApiError, FieldError};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::problems::{BadRequest, Conflict, Forbidden, Internal, Invalid, JsonBody, NotFound, Unauthenticated};
use crate::app::AppState;
use crate::config::ms;
use crate::db::{is_unique_violation, to_rfc3339};
use crate::domain::labels::{validate_labels, Labels, Selector};
use crate::domain::liveness::Liveness;
use crate::domain::{schema, ClusterId, ClusterName, Role};
use crate::secrets::{new_token, token_hash, TokenKind};
use crate::store::audit;
use crate::store::clusters::{Cluster, PageRow};
use crate::store::{self, Conn};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_clusters, create_cluster))
        .routes(routes!(get_cluster, update_cluster, delete_cluster))
        .routes(routes!(reissue_bootstrap_token))
        .routes(routes!(install_manifest, install_manifest_post))
}

/// Status of a cluster's agent connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClusterStatus {
    /// Created; no agent has connected yet.
    Pending,
    Connected,
    /// Connected, but heartbeats were missed.
    Stale,
    Disconnected,
}

impl ClusterStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterStatus::Pending => "pending",
            ClusterStatus::Connected => "connected",
            ClusterStatus::Stale => "stale",
            ClusterStatus::Disconnected => "disconnected",
        }
    }

    /// The status a stored (effective) status names; another value is the database's fault.
    pub fn parse(cluster: ClusterId, status: &str) -> Result<Self, ApiError> {
        [ClusterStatus::Pending, ClusterStatus::Connected, ClusterStatus::Stale, ClusterStatus::Disconnected]
            .into_iter()
            .find(|s| s.as_str() == status)
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("cluster {cluster} has unknown status {status:?}")))
    }
}

/// A cluster as the API shows it. Borrowed where it can be: a page of them is written straight
/// from the database's text (`store::clusters::Page`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClusterView<'a> {
    pub id: ClusterId,
    #[schema(value_type = String)]
    pub name: Cow<'a, str>,
    #[schema(schema_with = schema::labels)]
    pub labels: Cow<'a, RawValue>,
    pub status: ClusterStatus,
    #[serde(serialize_with = "super::timestamp::serialize")]
    pub created_at: chrono::DateTime<chrono::Utc>,
    #[serde(serialize_with = "super::timestamp::serialize")]
    pub updated_at: chrono::DateTime<chrono::Utc>,
    #[serde(serialize_with = "super::timestamp::option")]
    pub last_seen_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Version of the connected agent, once one has connected.
    #[schema(value_type = Option<String>)]
    pub agent_version: Option<Cow<'a, str>>,
    #[schema(value_type = Option<String>)]
    pub kubernetes_version: Option<Cow<'a, str>>,
}

impl ClusterView<'static> {
    fn of(c: Cluster, live: &Liveness) -> Result<ClusterView<'static>, ApiError> {
        let status = ClusterStatus::parse(c.id, c.effective_status(live))?;
        Ok(ClusterView {
            id: c.id,
            name: c.name.into(),
            labels: Cow::Owned(serde_json::value::to_raw_value(&c.labels).expect("a string map always serializes")),
            status,
            created_at: to_rfc3339(c.created_at),
            updated_at: to_rfc3339(c.updated_at),
            last_seen_at: c.last_seen_at.map(to_rfc3339),
            agent_version: c.agent_version.map(Cow::Owned),
            kubernetes_version: c.kubernetes_version.map(Cow::Owned),
        })
    }
}

impl<'a> ClusterView<'a> {
    fn of_row(r: &'a PageRow<'a>, live: &Liveness) -> Result<ClusterView<'a>, ApiError> {
        let status = ClusterStatus::parse(r.id, live.status(&r.status, r.last_seen_at))?;
        Ok(ClusterView {
            id: r.id,
            name: Cow::Borrowed(&r.name),
            labels: Cow::Borrowed(r.labels),
            status,
            created_at: to_rfc3339(r.created_at),
            updated_at: to_rfc3339(r.updated_at),
            last_seen_at: r.last_seen_at.map(to_rfc3339),
            agent_version: r.agent_version.as_deref().map(Cow::Borrowed),
            kubernetes_version: r.kubernetes_version.as_deref().map(Cow::Borrowed),
        })
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BootstrapToken {
    /// Single use; shown only in this response.
    pub token: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateClusterRequest {
    #[schema(schema_with = schema::cluster_name)]
    pub name: String,
    #[serde(default)]
    #[schema(schema_with = schema::labels)]
    pub labels: Labels,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedCluster {
    pub cluster: ClusterView<'static>,
    pub bootstrap_token: BootstrapToken,
}

/// Creates a cluster and its first bootstrap token.
#[utoipa::path(post, path = "/api/v1/clusters", tag = "clusters", request_body = CreateClusterRequest,
    responses((status = 201, body = CreatedCluster), JsonBody, Unauthenticated, Forbidden, Conflict, Internal),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn create_cluster(
    State(state): State<AppState>,
    auth: Principal,
    ApiJson(req): ApiJson<CreateClusterRequest>,
) -> Result<(StatusCode, Json<CreatedCluster>), ApiError> {
    auth.require(Role::Admin)?;
    let mut errors = Vec::new();
    let name = req.name.parse::<ClusterName>().map_err(|e| errors.push(FieldError::new("name", e.message))).ok();
    if let Err(e) = validate_labels(&req.labels) {
        errors.push(FieldError::new("labels", e.message));
    }
    let Some(name) = name.filter(|_| errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let now = state.clock.now_ms();
    let cluster = Cluster {
        id: ClusterId::new(),
        org_id: auth.org_id,
        name: name.as_str().to_owned(),
        labels: req.labels,
        status: ClusterStatus::Pending.as_str().into(),
        created_at: now,
        updated_at: now,
        last_seen_at: None,
        agent_version: None,
        kubernetes_version: None,
    };
    let mut tx = state.db.begin().await?;
    store::clusters::insert(&mut tx, &cluster).await.map_err(|e| {
        if is_unique_violation(&e) {
            ApiError::Conflict { kind: "name-taken", detail: format!("a cluster named {:?} exists", cluster.name), field: Some("name".into()) }
        } else {
            e.into()
        }
    })?;
    audit::record(
        &mut tx,
        auth.org_id,
        now,
        &auth.actor,
        "cluster.create",
        ("cluster", cluster.id.to_string()),
        serde_json::json!({ "name": cluster.name, "labels": cluster.labels }),
    )
    .await?;
    let bootstrap_token = issue_bootstrap_token(&state, &mut tx, &auth, cluster.id, now).await?;
    tx.commit().await?;
    crate::gateway::dispatch::clusters_changed(&state, auth.org_id).await;
    Ok((StatusCode::CREATED, Json(CreatedCluster { cluster: ClusterView::of(cluster, &state.liveness())?, bootstrap_token })))
}

/// A new single-use bootstrap token; the cluster's earlier unused tokens stop working.
async fn issue_bootstrap_token(state: &AppState, conn: &mut Conn, auth: &Principal, cluster: ClusterId, now: i64) -> Result<BootstrapToken, ApiError> {
    let token = new_token(TokenKind::Bootstrap);
    let expires_at = now + ms(state.config.bootstrap_token_ttl);
    store::clusters::expire_bootstrap_tokens(conn, auth.org_id, cluster, now).await?;
    store::clusters::insert_bootstrap_token(conn, &token_hash(&token), auth.org_id, cluster, now, expires_at).await?;
    audit::record(conn, auth.org_id, now, &auth.actor, "cluster.bootstrap_token.issue", ("cluster", cluster.to_string()), serde_json::json!({})).await?;
    Ok(BootstrapToken { token, expires_at: to_rfc3339(expires_at) })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListClustersQuery {
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` from the previous page: the page starts after the name it encodes.
    #[param(pattern = "^([A-Za-z0-9_-]{4})*([A-Za-z0-9_-]{2,3})?$")]
    cursor: Option<String>,
    #[param(schema_with = schema::selector)]
    selector: Option<String>,
    /// pending, connected, stale or disconnected.
    status: Option<ClusterStatus>,
}

/// Cursors are the last name of a page in unpadded base64url; decoding also takes the
/// strings that differ only in unused trailing bits.
const CURSOR: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_encode_padding(false).with_decode_allow_trailing_bits(true).with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClusterPage<'a> {
    pub items: Vec<ClusterView<'a>>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Lists clusters by name. Pages may be served from a cache up to `read_cache_ms` old; changes
/// made through the API show at once (see `cache`).
#[utoipa::path(get, path = "/api/v1/clusters", tag = "clusters", params(ListClustersQuery),
    responses((status = 200, body = ClusterPage), BadRequest, Unauthenticated, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn list_clusters(
    State(state): State<AppState>,
    auth: Principal,
    RawQuery(raw): RawQuery,
    ApiQuery(q): ApiQuery<ListClustersQuery>,
) -> Result<impl IntoResponse, ApiError> {
    // Checked before the cache, so a bad request is never answered from it.
    let limit = super::page_limit(q.limit, 50)?;
    let selector: Selector =
        q.selector.as_deref().unwrap_or("").parse().map_err(|e: crate::domain::labels::LabelError| ApiError::field("selector", e.message))?;
    let after = q
        .cursor
        .as_deref()
        .map(|c| {
            // Any base64url string is a position in the name order, as the document says.
            CURSOR.decode(c).map(|b| String::from_utf8_lossy(&b).into_owned()).map_err(|_| ApiError::field("cursor", "is not a cursor returned by this API"))
        })
        .transpose()?;
    let render = async {
        let mut conn = state.db.pool.acquire().await?;
        let live = state.liveness();
        let query =
            store::clusters::ListQuery { selector: &selector, status: q.status.map(|s| (s.as_str(), live)), after_name: after.as_deref(), limit: limit + 1 };
        let page = store::clusters::page(&mut conn, auth.org_id, &query).await?;
        let (rows, next_cursor) = super::into_page(page.rows()?, limit, |r| CURSOR.encode(r.name.as_bytes()));
        let items = rows.iter().map(|r| ClusterView::of_row(r, &live)).collect::<Result<_, _>>()?;
        let body = serde_json::to_vec(&ClusterPage { items, next_cursor }).map_err(anyhow::Error::from)?;
        Ok(Bytes::from(body))
    };
    let page = state.read_cache.clusters_page(auth.org_id, raw.as_deref().unwrap_or(""), render).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], page))
}

pub(crate) async fn find(conn: &mut Conn, auth: &Principal, id: ClusterId) -> Result<Cluster, ApiError> {
    store::clusters::get(conn, auth.org_id, id).await?.ok_or(ApiError::NotFound("cluster"))
}

/// A cluster with its findings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClusterDetail {
    #[serde(flatten)]
    pub cluster: ClusterView<'static>,
    /// What the gateway is refusing of the cluster's agent (over its message or connection rate,
    /// or over a quota: refused data is not stored), one finding per reason while it goes on;
    /// empty when nothing is.
    pub throttled: Vec<store::throttles::Throttle>,
}

/// One cluster.
#[utoipa::path(get, path = "/api/v1/clusters/{id}", tag = "clusters", params(("id" = ClusterId, Path, description = "Cluster id")),
    responses((status = 200, body = ClusterDetail), BadRequest, Unauthenticated, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, cluster_id = %id))]
async fn get_cluster(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<ClusterId>) -> Result<Json<ClusterDetail>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    let cluster = ClusterView::of(find(&mut conn, &auth, id).await?, &state.liveness())?;
    let throttled = store::throttles::current(&mut conn, auth.org_id, id, state.clock.now_ms()).await?;
    Ok(Json(ClusterDetail { cluster, throttled }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateClusterRequest {
    /// Replaces all labels.
    #[schema(schema_with = schema::labels)]
    pub labels: Labels,
}

/// Replaces a cluster's labels.
#[utoipa::path(patch, path = "/api/v1/clusters/{id}", tag = "clusters", params(("id" = ClusterId, Path, description = "Cluster id")),
    request_body = UpdateClusterRequest,
    responses((status = 200, body = ClusterView), JsonBody, Unauthenticated, Forbidden, NotFound, Internal),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, cluster_id = %id))]
async fn update_cluster(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath(id): ApiPath<ClusterId>,
    ApiJson(req): ApiJson<UpdateClusterRequest>,
) -> Result<Json<ClusterView<'static>>, ApiError> {
    auth.require(Role::Admin)?;
    validate_labels(&req.labels).map_err(|e| ApiError::field("labels", e.message))?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    if !store::clusters::update_labels(&mut tx, auth.org_id, id, &req.labels, now).await? {
        return Err(ApiError::NotFound("cluster"));
    }
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "cluster.update", ("cluster", id.to_string()), serde_json::json!({ "labels": req.labels })).await?;
    let cluster = find(&mut tx, &auth, id).await?;
    tx.commit().await?;
    crate::gateway::dispatch::clusters_changed(&state, auth.org_id).await;
    Ok(Json(ClusterView::of(cluster, &state.liveness())?))
}

/// Deletes a cluster.
#[utoipa::path(delete, path = "/api/v1/clusters/{id}", tag = "clusters", params(("id" = ClusterId, Path, description = "Cluster id")),
    responses((status = 204), BadRequest, Unauthenticated, Forbidden, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, cluster_id = %id))]
async fn delete_cluster(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<ClusterId>) -> Result<StatusCode, ApiError> {
    auth.require(Role::Admin)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    let cluster = find(&mut tx, &auth, id).await?;
    store::clusters::delete(&mut tx, auth.org_id, id).await?;
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "cluster.delete", ("cluster", id.to_string()), serde_json::json!({ "name": cluster.name })).await?;
    tx.commit().await?;
    crate::gateway::dispatch::clusters_changed(&state, auth.org_id).await;
    // Its certificates went with it; cut a stream that is already open.
    crate::gateway::dispatch::agent_revoked(&state, id).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Issues a new bootstrap token for the cluster; earlier unused ones stop working.
#[utoipa::path(post, path = "/api/v1/clusters/{id}/bootstrap-token", tag = "clusters", params(("id" = ClusterId, Path, description = "Cluster id")),
    responses((status = 201, body = BootstrapToken), BadRequest, Unauthenticated, Forbidden, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, cluster_id = %id))]
async fn reissue_bootstrap_token(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath(id): ApiPath<ClusterId>,
) -> Result<(StatusCode, Json<BootstrapToken>), ApiError> {
    auth.require(Role::Admin)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    find(&mut tx, &auth, id).await?;
    let token = issue_bootstrap_token(&state, &mut tx, &auth, id, now).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(token)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InstallQuery {
    /// Namespaces opted into the mesh, comma-separated DNS-1123 labels (at most 100): each
    /// gets the Role that lets restart-workloads patch its Deployments. Like the mesh's own
    /// namespace they must exist before the manifest is applied.
    #[param(schema_with = schema::namespace_list)]
    meshed_namespaces: Option<String>,
}

fn meshed_namespaces(q: &InstallQuery) -> Result<Vec<&str>, ApiError> {
    crate::domain::labels::parse_namespace_list(q.meshed_namespaces.as_deref().unwrap_or("")).map_err(|e| ApiError::field("meshed_namespaces", e.message))
}

/// The Kubernetes manifest that installs the agent. It embeds a freshly issued bootstrap
/// token (earlier unused ones stop working), so it needs the admin role and is never cached.
/// With the dashboard's session cookie it also needs the CSRF token: another site must not be
/// able to retire a token in use by sending a browser here.
#[utoipa::path(get, path = "/api/v1/clusters/{id}/install.yaml", tag = "clusters", params(("id" = ClusterId, Path, description = "Cluster id"), InstallQuery),
    // No schema: the body is a stream of YAML documents, which no one JSON Schema describes.
    responses((status = 200, description = "Multi-document Kubernetes YAML", content_type = "application/yaml"),
        BadRequest, Unauthenticated, Forbidden, NotFound, Invalid, Internal),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, cluster_id = %id.0))]
async fn install_manifest(
    state: State<AppState>,
    Deliberate(auth): Deliberate,
    id: ApiPath<ClusterId>,
    q: ApiQuery<InstallQuery>,
) -> Result<impl IntoResponse, ApiError> {
    render_install_manifest(state, auth, id, q).await
}

/// The same manifest as `GET .../install.yaml`, for clients (the dashboard) that say with the
/// method that the request mints a token.
#[utoipa::path(post, path = "/api/v1/clusters/{id}/install.yaml", tag = "clusters", params(("id" = ClusterId, Path, description = "Cluster id"), InstallQuery),
    responses((status = 200, description = "Multi-document Kubernetes YAML", content_type = "application/yaml"),
        BadRequest, Unauthenticated, Forbidden, NotFound, Invalid, Internal),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, cluster_id = %id.0))]
async fn install_manifest_post(
    state: State<AppState>,
    auth: Principal,
    id: ApiPath<ClusterId>,
    q: ApiQuery<InstallQuery>,
) -> Result<impl IntoResponse, ApiError> {
    render_install_manifest(state, auth, id, q).await
}

#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, cluster_id = %id))]
async fn render_install_manifest(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath(id): ApiPath<ClusterId>,
    ApiQuery(q): ApiQuery<InstallQuery>,
) -> Result<impl IntoResponse, ApiError> {
    auth.require(Role::Admin)?;
    // Checked before a token is issued: a refused request spends nothing.
    let meshed = meshed_namespaces(&q)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    let cluster = find(&mut tx, &auth, id).await?;
    let token = issue_bootstrap_token(&state, &mut tx, &auth, id, now).await?;
    tx.commit().await?;
    let config = &state.config;
    let yaml = crate::install::render(&crate::install::InstallParams {
        cluster_id: &cluster.id.to_string(),
        cluster_name: &cluster.name,
        org_id: &auth.org_id.to_string(),
        bootstrap_token: &token.token,
        api_url: &config.public_url(),
        gateway_address: &config.gateway_address(),
        gateway_ca_pem: &state.pki.gateway_ca_pem,
        agent_image: &config.agent_image,
        mesh_namespace: &config.mesh_namespace,
        meshed_namespaces: &meshed,
    });
    Ok(([(header::CONTENT_TYPE, "application/yaml"), (header::CACHE_CONTROL, "no-store")], yaml))
}
