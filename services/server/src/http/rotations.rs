//! Trust-anchor rotations: an admin starts one with a new anchor (generated or uploaded), which
//! becomes `next`; the `anchor-rotation` job (`certificates`) walks every cluster of the
//! organization through distribute, reissue and retire, with no proxy restarted. Admins pause,
//! resume (which also retries clusters whose step failed), abort (in any phase), and exclude a
//! cluster that cannot take part; everyone reads the progress per cluster.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::Principal;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::problems::{BadRequest, Conflict, Forbidden, Internal, Invalid, JsonBody, NotFound, Unauthenticated};
use super::trust::{generated, insert, uploaded, GenerateAnchorRequest, UploadAnchorRequest};
use crate::app::AppState;
use crate::db::to_rfc3339;
use crate::domain::trust::{Anchor, AnchorSource, AnchorState, ClusterProgress, ProgressState, Rotation, RotationPhase};
use crate::domain::{ClusterId, Role};
use crate::store::{self, audit};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_rotations, start_rotation))
        .routes(routes!(get_rotation))
        .routes(routes!(pause_rotation))
        .routes(routes!(resume_rotation))
        .routes(routes!(abort_rotation))
        .routes(routes!(exclude_cluster))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClusterProgressView {
    pub cluster_id: ClusterId,
    #[serde(flatten)]
    pub progress: ClusterProgress,
}

/// A trust-anchor rotation and each cluster's progress in its current phase.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RotationView {
    pub id: uuid::Uuid,
    /// distribute, reissue, retire, done; or, once aborted, rollback_retire, rollback_reissue,
    /// rollback_distribute, aborted (starting from where it was).
    pub phase: RotationPhase,
    pub paused: bool,
    pub old_anchor_fingerprint: String,
    pub new_anchor_fingerprint: String,
    pub excluded: Vec<ClusterId>,
    pub clusters: Vec<ClusterProgressView>,
    pub started_by: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// The rotation as the API shows it, naming its anchors by fingerprint from `anchors` (the
/// organization's).
fn view(r: Rotation, anchors: &[Anchor]) -> RotationView {
    let fp = |id| anchors.iter().find(|a| a.id == id).map(|a| a.fingerprint.clone()).unwrap_or_default();
    RotationView {
        id: r.id,
        phase: r.phase,
        paused: r.paused,
        old_anchor_fingerprint: fp(r.old_anchor),
        new_anchor_fingerprint: fp(r.new_anchor),
        excluded: r.excluded,
        clusters: r.clusters.into_iter().map(|(cluster_id, progress)| ClusterProgressView { cluster_id, progress }).collect(),
        started_by: r.started_by,
        created_at: to_rfc3339(r.created_at),
        updated_at: to_rfc3339(r.updated_at),
    }
}

/// `view`, reading the organization's anchors.
async fn view_of(conn: &mut store::Conn, r: Rotation) -> Result<RotationView, ApiError> {
    let anchors = store::trust::anchors(conn, r.org_id).await?;
    Ok(view(r, &anchors))
}

/// A new anchor for the rotation: uploaded when `certificate_pem` is given (with
/// `private_key_pem`, checked as an upload is), otherwise generated.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRotationRequest {
    #[schema(min_length = 1, max_length = 16384)]
    pub certificate_pem: Option<String>,
    #[schema(min_length = 1, max_length = 16384)]
    pub private_key_pem: Option<String>,
    #[schema(min_length = 1, max_length = 64, pattern = "^[\\x20-\\x7e]+$")]
    pub common_name: Option<String>,
    #[schema(minimum = 1, maximum = 3650)]
    #[serde(default, deserialize_with = "super::extract::whole_number")]
    pub lifetime_days: Option<i64>,
}

/// The organization's rotations, newest first.
#[utoipa::path(get, path = "/api/v1/trust-anchors/rotations", tag = "certificates",
    responses((status = 200, body = Vec<RotationView>), Unauthenticated, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn list_rotations(State(state): State<AppState>, auth: Principal) -> Result<Json<Vec<RotationView>>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    let anchors = store::trust::anchors(&mut conn, auth.org_id).await?;
    Ok(Json(store::trust::rotations(&mut conn, auth.org_id).await?.into_iter().map(|r| view(r, &anchors)).collect()))
}

/// Starts a trust-anchor rotation (admins): the new anchor becomes `next` and every cluster's
/// bundle gains it. One rotation at a time (409 `rotation-in-progress`), from an active
/// anchor (409 `no-trust-anchor`).
#[utoipa::path(post, path = "/api/v1/trust-anchors/rotations", tag = "certificates", request_body = StartRotationRequest,
    responses((status = 201, body = RotationView), JsonBody, Unauthenticated, Forbidden, Conflict, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn start_rotation(
    State(state): State<AppState>,
    auth: Principal,
    ApiJson(req): ApiJson<StartRotationRequest>,
) -> Result<(StatusCode, Json<RotationView>), ApiError> {
    auth.require(Role::Admin)?;
    let (material, source) = match (req.certificate_pem, req.private_key_pem) {
        (Some(certificate_pem), Some(private_key_pem)) => {
            (uploaded(&state, &UploadAnchorRequest { certificate_pem, private_key_pem })?, AnchorSource::Uploaded)
        }
        (Some(_), None) => return Err(ApiError::field("private_key_pem", "required with certificate_pem")),
        (None, Some(_)) => return Err(ApiError::field("certificate_pem", "required with private_key_pem")),
        (None, None) => {
            let generate = GenerateAnchorRequest { common_name: req.common_name, lifetime_days: req.lifetime_days };
            (generated(&state, &auth, &generate).await?, AnchorSource::Generated)
        }
    };
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    if store::trust::rotations(&mut tx, auth.org_id).await?.iter().any(|r| !r.phase.finished()) {
        return Err(ApiError::Conflict { kind: "rotation-in-progress", detail: "a trust-anchor rotation is in progress".into(), field: None });
    }
    let Some((old, _)) = store::trust::anchor_in(&mut tx, auth.org_id, AnchorState::Active).await? else {
        let detail = "the organization has no trust anchor to rotate from; create one at /api/v1/trust-anchors".into();
        return Err(ApiError::Conflict { kind: "no-trust-anchor", detail, field: None });
    };
    let new = insert(&state, &mut tx, &auth, material, source, AnchorState::Next, now).await?;
    let rotation = Rotation {
        id: uuid::Uuid::now_v7(),
        org_id: auth.org_id,
        old_anchor: old.id,
        new_anchor: new.id,
        phase: RotationPhase::Distribute,
        paused: false,
        excluded: Vec::new(),
        clusters: Default::default(),
        started_by: format!("{}:{}", auth.actor.kind(), auth.actor.id()),
        created_at: now,
        updated_at: now,
    };
    store::trust::insert_rotation(&mut tx, &rotation).await?;
    let details = serde_json::json!({ "old": old.fingerprint, "new": new.fingerprint });
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "trust_anchor.rotation.start", ("anchor_rotation", rotation.id.to_string()), details).await?;
    let view = view_of(&mut tx, rotation).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn find(conn: &mut store::Conn, auth: &Principal, id: uuid::Uuid) -> Result<Rotation, ApiError> {
    store::trust::rotation(conn, auth.org_id, id).await?.ok_or(ApiError::NotFound("rotation"))
}

/// One rotation.
#[utoipa::path(get, path = "/api/v1/trust-anchors/rotations/{id}", tag = "certificates",
    params(("id" = uuid::Uuid, Path, description = "Rotation id")),
    responses((status = 200, body = RotationView), BadRequest, Unauthenticated, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, rotation = %id))]
async fn get_rotation(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<uuid::Uuid>) -> Result<Json<RotationView>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    let r = find(&mut conn, &auth, id).await?;
    Ok(Json(view_of(&mut conn, r).await?))
}

/// Changes a rotation as an admin asked and records it; `change` refuses what does not apply.
/// The job saves the rotation every look; a change that meets one of its saves is applied again
/// to what the job saved, so it is neither lost nor refused.
async fn change(
    state: &AppState,
    auth: &Principal,
    id: uuid::Uuid,
    action: &str,
    change: impl Fn(&mut Rotation) -> Result<(), ApiError>,
) -> Result<Json<RotationView>, ApiError> {
    auth.require(Role::Admin)?;
    for _ in 0..5 {
        let mut tx = state.db.begin().await?;
        let mut r = find(&mut tx, auth, id).await?;
        let read = (r.phase, r.updated_at);
        if r.phase.finished() {
            return Err(ApiError::Conflict { kind: "rotation-finished", detail: format!("the rotation is {}", r.phase.as_str()), field: None });
        }
        change(&mut r)?;
        let now = state.clock.now_ms().max(r.updated_at + 1);
        r.updated_at = now;
        if r.phase != read.0 {
            if let Some((_, Some((old_state, new_state)))) = read.0.abort() {
                store::trust::set_anchor_state(&mut tx, auth.org_id, r.old_anchor, old_state).await?;
                store::trust::set_anchor_state(&mut tx, auth.org_id, r.new_anchor, new_state).await?;
            }
        }
        if !store::trust::save_rotation(&mut tx, &r, read).await? {
            continue;
        }
        let details = serde_json::json!({ "phase": r.phase, "paused": r.paused, "excluded": r.excluded });
        audit::record(&mut tx, auth.org_id, now, &auth.actor, &format!("trust_anchor.rotation.{action}"), ("anchor_rotation", id.to_string()), details).await?;
        let view = view_of(&mut tx, r).await?;
        tx.commit().await?;
        return Ok(Json(view));
    }
    Err(ApiError::Conflict { kind: "rotation-moved", detail: "the rotation kept moving; read it and try again".into(), field: None })
}

/// Pauses a rotation (admins): nothing more is sent until it is resumed.
#[utoipa::path(post, path = "/api/v1/trust-anchors/rotations/{id}/pause", tag = "certificates",
    params(("id" = uuid::Uuid, Path, description = "Rotation id")),
    responses((status = 200, body = RotationView), BadRequest, Unauthenticated, Forbidden, NotFound, Conflict, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, rotation = %id))]
async fn pause_rotation(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<uuid::Uuid>) -> Result<Json<RotationView>, ApiError> {
    change(&state, &auth, id, "pause", |r| {
        r.paused = true;
        Ok(())
    })
    .await
}

/// Resumes a rotation (admins), retrying the clusters whose step failed.
#[utoipa::path(post, path = "/api/v1/trust-anchors/rotations/{id}/resume", tag = "certificates",
    params(("id" = uuid::Uuid, Path, description = "Rotation id")),
    responses((status = 200, body = RotationView), BadRequest, Unauthenticated, Forbidden, NotFound, Conflict, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, rotation = %id))]
async fn resume_rotation(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<uuid::Uuid>) -> Result<Json<RotationView>, ApiError> {
    change(&state, &auth, id, "resume", |r| {
        r.paused = false;
        for p in r.clusters.values_mut().filter(|p| p.state == ProgressState::Failed) {
            *p = ClusterProgress { phase: p.phase, ..Default::default() };
        }
        Ok(())
    })
    .await
}

/// Aborts a rotation (admins) in any phase before it is done: every cluster goes back to the old
/// anchor in the reverse order (the old anchor back in every bundle if it was leaving them,
/// then issuers, then bundles), and the new anchor is set aside. A rotation already walking
/// back is refused (409 `already-aborted`).
#[utoipa::path(post, path = "/api/v1/trust-anchors/rotations/{id}/abort", tag = "certificates",
    params(("id" = uuid::Uuid, Path, description = "Rotation id")),
    responses((status = 200, body = RotationView), BadRequest, Unauthenticated, Forbidden, NotFound, Conflict, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, rotation = %id))]
async fn abort_rotation(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<uuid::Uuid>) -> Result<Json<RotationView>, ApiError> {
    change(&state, &auth, id, "abort", |r| {
        let Some((phase, _)) = r.phase.abort() else {
            let detail = format!("the rotation is in {}: it is already walking back to the old anchor", r.phase.as_str());
            return Err(ApiError::Conflict { kind: "already-aborted", detail, field: None });
        };
        r.phase = phase;
        r.paused = false;
        Ok(())
    })
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExcludeRequest {
    pub cluster_id: ClusterId,
}

/// Takes a cluster out of a rotation (admins): its agent is gone, say. It keeps the bundle and
/// issuer it has, and the phases go on without it.
#[utoipa::path(post, path = "/api/v1/trust-anchors/rotations/{id}/exclude", tag = "certificates", request_body = ExcludeRequest,
    params(("id" = uuid::Uuid, Path, description = "Rotation id")),
    responses((status = 200, body = RotationView), JsonBody, BadRequest, Unauthenticated, Forbidden, NotFound, Conflict, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, rotation = %id))]
async fn exclude_cluster(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath(id): ApiPath<uuid::Uuid>,
    ApiJson(req): ApiJson<ExcludeRequest>,
) -> Result<Json<RotationView>, ApiError> {
    auth.require(Role::Admin)?;
    let mut conn = state.db.pool.acquire().await?;
    store::clusters::get(&mut conn, auth.org_id, req.cluster_id).await?.ok_or(ApiError::NotFound("cluster"))?;
    drop(conn);
    change(&state, &auth, id, "exclude", move |r| {
        if !r.excluded.contains(&req.cluster_id) {
            r.excluded.push(req.cluster_id);
        }
        Ok(())
    })
    .await
}
