//! API tokens for automation: created with a role no higher than the creator's, shown once,
//! listed by prefix and last use, revocable. A token acts for the member who created it (a
//! token made with a token, for that token's member): it never does more than that member's
//! current role allows, and it is revoked when the member leaves the organization.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::Principal;
use super::error::{ApiError, FieldError};
use super::extract::{whole_number, ApiJson, ApiPath};
use super::problems::{BadRequest, Forbidden, Internal, JsonBody, NotFound, Unauthenticated};
use crate::app::AppState;
use crate::db::to_rfc3339;
use crate::domain::audit::Actor;
use crate::domain::{parse_display_name, schema, Role, TokenId};
use crate::secrets::{new_token, token_hash, TokenKind};
use crate::store::audit;
use crate::store::{self, api_tokens::ApiToken};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_tokens, create_token)).routes(routes!(revoke_token))
}

/// How much of a token is kept in the clear to recognise it in lists.
const PREFIX_CHARS: usize = 12;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiTokenView {
    pub id: TokenId,
    pub name: String,
    pub role: Role,
    /// The first characters of the token, to recognise it.
    pub prefix: String,
    /// The user id of the member the token acts for (absent only on tokens revoked when
    /// this was introduced, whose creator was unknown).
    pub created_by: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub last_used_at: Option<chrono::DateTime<chrono::Utc>>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<ApiToken> for ApiTokenView {
    fn from(t: ApiToken) -> Self {
        ApiTokenView {
            id: t.id,
            name: t.name,
            role: t.role,
            prefix: t.prefix,
            created_by: t.created_by,
            created_at: to_rfc3339(t.created_at),
            expires_at: to_rfc3339(t.expires_at),
            last_used_at: t.last_used_at.map(to_rfc3339),
            revoked_at: t.revoked_at.map(to_rfc3339),
        }
    }
}

/// The organization's API tokens (owners and admins).
///
/// A token acts for the member who created it (a token created with a token acts for that
/// token's member). It never grants more than that member has now: after a demotion the
/// token is capped at the member's new role (its effective role is the lower of the two,
/// checked on every request); when the member is removed from the organization, all their
/// tokens are revoked at once.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "api-tokens",
    responses((status = 200, body = Vec<ApiTokenView>), Unauthenticated, Forbidden, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn list_tokens(State(state): State<AppState>, auth: Principal) -> Result<Json<Vec<ApiTokenView>>, ApiError> {
    auth.require(Role::Admin)?;
    let mut conn = state.db.pool.acquire().await?;
    let tokens = store::api_tokens::list(&mut conn, auth.org_id).await?;
    Ok(Json(tokens.into_iter().map(Into::into).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    #[schema(schema_with = schema::display_name)]
    pub name: String,
    /// At most the creator's own role.
    pub role: Role,
    /// Days until the token expires, 1 to 365 (default 90).
    #[schema(minimum = 1, maximum = 365)]
    #[serde(default, deserialize_with = "whole_number")]
    pub expires_in_days: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// The secret. Shown only in this response; store it now.
    pub token: String,
    #[serde(flatten)]
    pub info: ApiTokenView,
}

/// Creates an API token; the secret is shown once.
///
/// A token acts for the member who created it (a token created with a token acts for that
/// token's member). It never grants more than that member has now: after a demotion the
/// token is capped at the member's new role (its effective role is the lower of the two,
/// checked on every request); when the member is removed from the organization, all their
/// tokens are revoked at once.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "api-tokens", request_body = CreateTokenRequest,
    responses((status = 201, body = CreatedToken), JsonBody, Unauthenticated, Forbidden, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn create_token(
    State(state): State<AppState>,
    auth: Principal,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    auth.require(Role::Admin)?;
    let mut errors = Vec::new();
    let name = parse_display_name(&req.name).map_err(|e| errors.push(FieldError::new("name", e))).ok();
    if req.role > auth.role {
        errors.push(FieldError::new("role", format!("cannot exceed your own role ({})", auth.role.as_str())));
    }
    let days = req.expires_in_days.unwrap_or(90);
    if !(1..=365).contains(&days) {
        errors.push(FieldError::new("expires_in_days", "must be between 1 and 365"));
    }
    let Some(name) = name.filter(|_| errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let token = new_token(TokenKind::Api);
    let now = state.clock.now_ms();
    let id = TokenId::new();
    let mut tx = state.db.begin().await?;
    let created_by = match auth.actor {
        Actor::User { id, .. } => id,
        // Authentication found the token's member; the token may have been revoked since.
        Actor::ApiToken(token) => {
            store::api_tokens::creator(&mut tx, auth.org_id, token).await?.ok_or(ApiError::Unauthenticated("the API token is unknown, expired or revoked"))?
        }
    };
    store::api_tokens::insert(
        &mut tx,
        &store::api_tokens::NewApiToken {
            id,
            org_id: auth.org_id,
            name: &name,
            role: req.role,
            prefix: &token[..PREFIX_CHARS],
            token_hash: &token_hash(&token),
            created_by,
            created_at: now,
            expires_at: now + i64::from(days) * 86_400_000,
        },
    )
    .await?;
    audit::record(
        &mut tx,
        auth.org_id,
        now,
        &auth.actor,
        "api_token.create",
        ("api_token", id.to_string()),
        serde_json::json!({ "name": name, "role": req.role }),
    )
    .await?;
    let info = store::api_tokens::get(&mut tx, auth.org_id, id).await?.ok_or(ApiError::NotFound("API token"))?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { token, info: info.into() })))
}

/// Revokes an API token at once.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "api-tokens",
    params(("id" = TokenId, Path, description = "Token id")),
    responses((status = 204), BadRequest, Unauthenticated, Forbidden, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, token_id = %id))]
async fn revoke_token(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<TokenId>) -> Result<StatusCode, ApiError> {
    auth.require(Role::Admin)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    if !store::api_tokens::revoke(&mut tx, auth.org_id, id, now).await? {
        return Err(ApiError::NotFound("API token"));
    }
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "api_token.revoke", ("api_token", id.to_string()), serde_json::json!({})).await?;
    tx.commit().await?;
    crate::gateway::dispatch::access_changed(&state).await;
    Ok(StatusCode::NO_CONTENT)
}
