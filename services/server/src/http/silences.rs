//! Silences of the caller's organization: admins create one (matchers, a window, a comment) and
//! expire it; everyone reads them. Expired silences stay listed. Evaluation
//! (`alerting::rules`) is what honours them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::Principal;
use super::error::{ApiError, FieldError};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::problems::{BadRequest, Conflict, Forbidden, Internal, Invalid, JsonBody, NotFound, Unauthenticated};
use crate::app::AppState;
use crate::db::to_rfc3339;
use crate::domain::audit::Actor;
use crate::domain::silences::{self, CreatedBy, MatcherSpec, Matchers, Silence, SilenceState};
use crate::domain::{Role, SilenceId};
use crate::store::{self, audit};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_silences, create_silence)).routes(routes!(get_silence, edit_silence, expire_silence))
}

/// A silence: while active, the alerts all its matchers match send no notifications.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SilenceView {
    pub id: SilenceId,
    /// All must match an alert's labels: its cluster's labels, `cluster`, `check`, `object`,
    /// `alertname` (the rule) and `severity`.
    pub matchers: Vec<MatcherSpec>,
    pub starts_at: chrono::DateTime<chrono::Utc>,
    /// When it ends, or ended (on expiry: when it was expired).
    pub ends_at: chrono::DateTime<chrono::Utc>,
    /// Where it stands now.
    pub state: SilenceState,
    /// Why the alerts are silenced.
    pub comment: String,
    pub created_by: CreatedBy,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl SilenceView {
    fn new(s: Silence, now: i64) -> SilenceView {
        SilenceView {
            id: s.id,
            matchers: s.matchers.specs(),
            starts_at: to_rfc3339(s.starts_at),
            ends_at: to_rfc3339(s.ends_at),
            state: s.state(now),
            comment: s.comment,
            created_by: s.created_by,
            created_at: to_rfc3339(s.created_at),
            updated_at: to_rfc3339(s.updated_at),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SilencePage {
    pub items: Vec<SilenceView>,
    pub next_cursor: Option<String>,
}

/// Which silences to list.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SilenceFilter {
    Active,
    Pending,
    Expired,
    /// Every silence (the default).
    #[default]
    All,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SilenceQuery {
    /// Which silences (default `all`).
    #[param(inline)]
    state: Option<SilenceFilter>,
    /// Page size, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(format = Uuid)]
    cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSilence {
    /// 1 to 32 matchers, all of which must match an alert; at least one must not match the
    /// empty string (a missing label), so a silence cannot mute everything.
    #[schema(min_items = 1, max_items = 32)]
    pub matchers: Vec<MatcherSpec>,
    /// Default and earliest: now (a start in the past is taken as now); at most 365 days ahead.
    pub starts_at: Option<chrono::DateTime<chrono::Utc>>,
    /// In the future, after `starts_at`, and at most 90 days after it.
    pub ends_at: chrono::DateTime<chrono::Utc>,
    /// Why: 1 to 1000 characters once trimmed.
    #[schema(min_length = 1, max_length = 1000)]
    pub comment: String,
}

async fn find(conn: &mut store::Conn, auth: &Principal, id: SilenceId) -> Result<Silence, ApiError> {
    store::silences::get(conn, auth.org_id, id).await?.ok_or(ApiError::NotFound("silence"))
}

/// What people call the actor: a user's e-mail, an API token's name.
async fn actor_name(conn: &mut store::Conn, auth: &Principal) -> Result<String, ApiError> {
    let name = match auth.actor {
        Actor::User { id, .. } => store::accounts::user_email(conn, id).await?,
        Actor::ApiToken(id) => store::api_tokens::get(conn, auth.org_id, id).await?.map(|t| t.name),
    };
    Ok(name.unwrap_or_else(|| auth.actor.id()))
}

/// The organization's silences, newest first; expired ones included unless filtered out.
#[utoipa::path(get, path = "/api/v1/silences", tag = "silences", params(SilenceQuery),
    responses((status = 200, body = SilencePage), BadRequest, Unauthenticated, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn list_silences(State(state): State<AppState>, auth: Principal, ApiQuery(q): ApiQuery<SilenceQuery>) -> Result<Json<SilencePage>, ApiError> {
    let limit = super::page_limit(q.limit, 100)?;
    let before = q.cursor.as_deref().map(|c| c.parse().map_err(|_| ApiError::field("cursor", "is not a cursor returned by this API"))).transpose()?;
    let filter = match q.state.unwrap_or_default() {
        SilenceFilter::Active => Some(SilenceState::Active),
        SilenceFilter::Pending => Some(SilenceState::Pending),
        SilenceFilter::Expired => Some(SilenceState::Expired),
        SilenceFilter::All => None,
    };
    let now = state.clock.now_ms();
    let mut conn = state.db.pool.acquire().await?;
    let rows = store::silences::list(&mut conn, auth.org_id, filter, now, before, limit + 1).await?;
    let (rows, next_cursor) = super::into_page(rows, limit, |s| s.id.to_string());
    Ok(Json(SilencePage { items: rows.into_iter().map(|s| SilenceView::new(s, now)).collect(), next_cursor }))
}

/// Creates a silence (admins): from `starts_at` to `ends_at`, alerts matched by all its
/// matchers change state as usual but send no notifications. A firing alert whose
/// notification was withheld is notified when the silence ends, if it still fires.
#[utoipa::path(post, path = "/api/v1/silences", tag = "silences", request_body = CreateSilence,
    responses((status = 201, body = SilenceView), JsonBody, Unauthenticated, Forbidden, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn create_silence(
    State(state): State<AppState>,
    auth: Principal,
    ApiJson(req): ApiJson<CreateSilence>,
) -> Result<(StatusCode, Json<SilenceView>), ApiError> {
    auth.require(Role::Admin)?;
    let now = state.clock.now_ms();
    let (matchers, (starts_at, ends_at), comment) = checked(&req, now)?;
    let mut tx = state.db.begin().await?;
    let created_by = CreatedBy { kind: auth.actor.kind().into(), id: auth.actor.id(), name: actor_name(&mut tx, &auth).await? };
    let silence = Silence { id: SilenceId::new(), org_id: auth.org_id, matchers, starts_at, ends_at, comment, created_by, created_at: now, updated_at: now };
    store::silences::insert(&mut tx, &silence).await?;
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "silence.create", ("silence", silence.id.to_string()), details(&silence)).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(SilenceView::new(silence, now))))
}

/// What the audit log keeps of a silence as made or edited.
fn details(s: &Silence) -> serde_json::Value {
    serde_json::json!({ "matchers": s.matchers.specs(), "starts_at": to_rfc3339(s.starts_at), "ends_at": to_rfc3339(s.ends_at), "comment": s.comment })
}

/// Checks a silence's matchers, window and comment.
fn checked(req: &CreateSilence, now: i64) -> Result<(Matchers, (i64, i64), String), ApiError> {
    let mut errors = Vec::new();
    let matchers = Matchers::parse(&req.matchers).map_err(|e| errors.extend(e.into_iter().map(|(f, m)| FieldError::new(f, m)))).ok();
    let window = silences::window(req.starts_at.map(|t| t.timestamp_millis()), req.ends_at.timestamp_millis(), now)
        .map_err(|(f, m)| errors.push(FieldError::new(f, m)))
        .ok();
    let comment = silences::parse_comment(&req.comment).map_err(|m| errors.push(FieldError::new("comment", m))).ok();
    match (matchers, window, comment, errors.is_empty()) {
        (Some(matchers), Some(window), Some(comment), true) => Ok((matchers, window, comment)),
        _ => Err(ApiError::Validation(errors)),
    }
}

/// Edits a pending or active silence in place (admins): its matchers, window and comment, as on
/// creation. An active silence keeps its start unless the request gives one. An expired
/// silence is history: 409 `silence-expired`; create a new one instead.
#[utoipa::path(put, path = "/api/v1/silences/{id}", tag = "silences", request_body = CreateSilence,
    params(("id" = SilenceId, Path, description = "Silence id")),
    responses((status = 200, body = SilenceView), JsonBody, BadRequest, Unauthenticated, Forbidden, NotFound, Conflict, Invalid, Internal),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, silence_id = %id))]
async fn edit_silence(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath(id): ApiPath<SilenceId>,
    ApiJson(req): ApiJson<CreateSilence>,
) -> Result<Json<SilenceView>, ApiError> {
    auth.require(Role::Admin)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    let silence = find(&mut tx, &auth, id).await?;
    let was = silence.state(now);
    if was == SilenceState::Expired {
        let detail = "the silence has expired; create a new one".into();
        return Err(ApiError::Conflict { kind: "silence-expired", detail, field: None });
    }
    let active_start = (was == SilenceState::Active && req.starts_at.is_none()).then_some(silence.starts_at);
    let (matchers, (starts_at, ends_at), comment) = checked(&req, now)?;
    let edited = Silence { matchers, starts_at: active_start.unwrap_or(starts_at), ends_at, comment, updated_at: now, ..silence };
    store::silences::update(&mut tx, &edited).await?;
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "silence.update", ("silence", id.to_string()), details(&edited)).await?;
    tx.commit().await?;
    Ok(Json(SilenceView::new(edited, now)))
}

/// One silence, with where it stands now.
#[utoipa::path(get, path = "/api/v1/silences/{id}", tag = "silences", params(("id" = SilenceId, Path, description = "Silence id")),
    responses((status = 200, body = SilenceView), BadRequest, Unauthenticated, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, silence_id = %id))]
async fn get_silence(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<SilenceId>) -> Result<Json<SilenceView>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    let silence = find(&mut conn, &auth, id).await?;
    Ok(Json(SilenceView::new(silence, state.clock.now_ms())))
}

/// Expires a silence now (admins): it stops muting, and stays listed as `expired`. A pending
/// silence expires before it began. Expiring an expired silence changes nothing.
#[utoipa::path(delete, path = "/api/v1/silences/{id}", tag = "silences", params(("id" = SilenceId, Path, description = "Silence id")),
    responses((status = 204), BadRequest, Unauthenticated, Forbidden, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, silence_id = %id))]
async fn expire_silence(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<SilenceId>) -> Result<StatusCode, ApiError> {
    auth.require(Role::Admin)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    let silence = find(&mut tx, &auth, id).await?;
    if store::silences::expire(&mut tx, auth.org_id, id, now).await? {
        let details = serde_json::json!({ "was": silence.state(now), "ends_at": to_rfc3339(now) });
        audit::record(&mut tx, auth.org_id, now, &auth.actor, "silence.expire", ("silence", id.to_string()), details).await?;
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
