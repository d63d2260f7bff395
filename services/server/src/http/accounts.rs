//! Sign-up, log-in, refresh-token rotation, log-out and `me`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::Principal;
use super::error::{ApiError, FieldError};
use super::extract::ApiJson;
use super::problems::{BadRequest, Conflict, Forbidden, Internal, JsonBody, TooManyRequests, Unauthenticated};
use crate::app::AppState;
use crate::config::ms;
use crate::db::is_unique_violation;
use crate::domain::audit::Actor;
use crate::domain::{parse_display_name, schema, Email, OrgId, Password, Role, SessionId, UserId};
use crate::jwt::Claims;
use crate::login;
use crate::secrets::{self, new_token, token_hash, TokenKind};
use crate::store;
use crate::store::audit;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(signup)).routes(routes!(login)).routes(routes!(refresh)).routes(routes!(logout)).routes(routes!(me))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    #[schema(schema_with = schema::email)]
    pub email: String,
    #[schema(schema_with = schema::password)]
    pub password: String,
    /// The name of the organization created with the account.
    #[schema(schema_with = schema::display_name)]
    pub organization: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub id: UserId,
    pub email: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrgView {
    pub id: OrgId,
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SignupResponse {
    pub user: UserView,
    pub organization: OrgView,
}

/// Creates a user and an organization owned by that user.
#[utoipa::path(post, path = "/api/v1/signup", tag = "accounts", request_body = SignupRequest,
    responses((status = 201, body = SignupResponse), JsonBody, Conflict, Internal))]
#[tracing::instrument(skip_all)]
async fn signup(State(state): State<AppState>, ApiJson(req): ApiJson<SignupRequest>) -> Result<(StatusCode, Json<SignupResponse>), ApiError> {
    let mut errors = Vec::new();
    let email = req.email.parse::<Email>().map_err(|e| errors.push(FieldError::new("email", e))).ok();
    let password = Password::parse(&req.password).map_err(|e| errors.push(FieldError::new("password", e))).ok();
    let org_name = parse_display_name(&req.organization).map_err(|e| errors.push(FieldError::new("organization", e))).ok();
    let (Some(email), Some(password), Some(org_name)) = (email, password, org_name) else {
        return Err(ApiError::Validation(errors));
    };
    // Hash outside the transaction: it is deliberately slow.
    let hash = tokio::task::spawn_blocking(move || secrets::hash_password(&password)).await.map_err(anyhow::Error::from)?;
    let (user_id, org_id, now) = (UserId::new(), OrgId::new(), state.clock.now_ms());
    let mut tx = state.db.begin().await?;
    store::accounts::create_user(&mut tx, user_id, &email, &hash, now).await.map_err(|e| {
        if is_unique_violation(&e) {
            ApiError::Conflict { kind: "email-taken", detail: "an account with this e-mail exists; log in instead".into(), field: Some("email".into()) }
        } else {
            e.into()
        }
    })?;
    store::accounts::create_org(&mut tx, org_id, &org_name, now).await?;
    store::accounts::add_member(&mut tx, org_id, user_id, Role::Owner, now).await?;
    let actor = Actor::User { id: user_id, session: SessionId::new() };
    audit::record(&mut tx, org_id, now, &actor, "organization.create", ("organization", org_id.to_string()), serde_json::json!({ "name": org_name })).await?;
    tx.commit().await?;
    tracing::info!(%user_id, %org_id, "signed up");
    Ok((
        StatusCode::CREATED,
        Json(SignupResponse {
            user: UserView { id: user_id, email: email.as_str().to_owned() },
            organization: OrgView { id: org_id, name: org_name, role: Role::Owner },
        }),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(schema_with = schema::email)]
    pub email: String,
    pub password: String,
    /// The organization to act in; defaults to the user's first organization.
    pub organization_id: Option<OrgId>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    /// Lifetime of the access token in seconds.
    pub expires_in: i64,
    /// Single use: each refresh returns a new one.
    pub refresh_token: String,
    pub organization_id: OrgId,
    pub role: Role,
}

/// Exchanges e-mail and password for an access token and a refresh token.
///
/// Throttled per account (`login_max_failures_per_account`, default 5) and per client address
/// (`login_max_failures_per_address`, default 20) within `login_failure_window_secs` (default
/// 900) from the first failure: every attempt is counted before the password is checked (a
/// right password gives its count back), on all replicas together. Past a limit, every
/// attempt, even with the right password, gets 429 with `Retry-After` in seconds.
#[utoipa::path(post, path = "/api/v1/login", tag = "accounts", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse), JsonBody, Unauthenticated, Forbidden, TooManyRequests, Internal))]
#[tracing::instrument(skip_all)]
async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let login = login::check_password(&state, peer, &req.email, req.password, req.organization_id).await?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    let session = login::create_session(&state, &mut tx, &login, now).await?;
    let response = issue_tokens(&state, &mut tx, login.user, login.org, session, login.role, now).await?;
    tx.commit().await?;
    Ok(Json(response))
}

async fn issue_tokens(
    state: &AppState,
    conn: &mut store::Conn,
    user: UserId,
    org: OrgId,
    session: SessionId,
    role: Role,
    now: i64,
) -> Result<TokenResponse, ApiError> {
    let refresh_token = new_token(TokenKind::Refresh);
    let ttl = ms(state.config.refresh_token_ttl);
    store::sessions::insert_refresh_token(conn, &token_hash(&refresh_token), session, org, now, now + ttl).await?;
    let claims = Claims::new(user, org, session, now, state.config.access_token_ttl);
    Ok(TokenResponse {
        access_token: state.keys.sign(&claims),
        token_type: "Bearer".into(),
        expires_in: i64::try_from(state.config.access_token_ttl.as_secs()).unwrap_or(i64::MAX),
        refresh_token,
        organization_id: org,
        role,
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// Rotates a refresh token. Presenting one that was already used revokes its whole session.
#[utoipa::path(post, path = "/api/v1/token/refresh", tag = "accounts", request_body = RefreshRequest,
    responses((status = 200, body = TokenResponse), JsonBody, Unauthenticated, Internal))]
#[tracing::instrument(skip_all)]
async fn refresh(State(state): State<AppState>, ApiJson(req): ApiJson<RefreshRequest>) -> Result<Json<TokenResponse>, ApiError> {
    let now = state.clock.now_ms();
    let hash = token_hash(&req.refresh_token);
    let mut tx = state.db.begin().await?;
    let found = store::sessions::find_refresh_token(&mut tx, &hash).await?.ok_or(ApiError::Unauthenticated("unknown refresh token"))?;
    if found.session_revoked {
        return Err(ApiError::Unauthenticated("the session has ended; log in again"));
    }
    if found.used || !store::sessions::use_refresh_token(&mut tx, &hash, now).await? {
        // Replay of a rotated token: whoever holds the family may be an attacker. End it.
        store::sessions::revoke(&mut tx, found.session_id, now).await?;
        tx.commit().await?;
        crate::gateway::dispatch::access_changed(&state).await;
        tracing::warn!(session_id = %found.session_id, "refresh token reuse: session revoked");
        return Err(ApiError::Unauthenticated("refresh token reuse detected; the session was revoked"));
    }
    if found.expires_at <= now {
        return Err(ApiError::Unauthenticated("the refresh token has expired; log in again"));
    }
    let role = store::sessions::live_role(&mut tx, found.session_id, found.user_id, found.org_id, now)
        .await?
        .ok_or(ApiError::Unauthenticated("the session has ended; log in again"))?;
    let response = issue_tokens(&state, &mut tx, found.user_id, found.org_id, found.session_id, role, now).await?;
    tx.commit().await?;
    Ok(Json(response))
}

/// Ends the caller's session: its access and refresh tokens stop working at once.
#[utoipa::path(post, path = "/api/v1/logout", tag = "accounts",
    responses((status = 204), BadRequest, Unauthenticated, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn logout(State(state): State<AppState>, auth: Principal) -> Result<StatusCode, ApiError> {
    let Actor::User { session, .. } = auth.actor else {
        return Err(ApiError::BadRequest { detail: "API tokens have no session; revoke them with DELETE /api/v1/tokens/{id}".into(), field: None });
    };
    let mut conn = state.db.pool.acquire().await?;
    store::sessions::revoke(&mut conn, session, state.clock.now_ms()).await?;
    crate::gateway::dispatch::access_changed(&state).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MeResponse {
    /// The user, when authenticated as one (absent for API tokens).
    pub user: Option<UserView>,
    pub api_token_id: Option<crate::domain::TokenId>,
    /// The organization this credential acts in.
    pub organization: OrgView,
    /// Every organization the user belongs to.
    pub organizations: Vec<OrgView>,
}

/// Who the caller is, and in which organization.
#[utoipa::path(get, path = "/api/v1/me", tag = "accounts",
    responses((status = 200, body = MeResponse), Unauthenticated, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn me(State(state): State<AppState>, auth: Principal) -> Result<Json<MeResponse>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    let org_name = store::accounts::org_name(&mut conn, auth.org_id).await?.ok_or(ApiError::NotFound("organization"))?;
    let organization = OrgView { id: auth.org_id, name: org_name, role: auth.role };
    Ok(Json(match auth.actor {
        Actor::User { id, .. } => {
            let email = store::accounts::user_email(&mut conn, id).await?.ok_or(ApiError::Unauthenticated("unknown user"))?;
            let organizations =
                store::accounts::memberships_of(&mut conn, id).await?.into_iter().map(|m| OrgView { id: m.org_id, name: m.org_name, role: m.role }).collect();
            MeResponse { user: Some(UserView { id, email }), api_token_id: None, organization, organizations }
        }
        Actor::ApiToken(token) => MeResponse { user: None, api_token_id: Some(token), organizations: vec![], organization },
    }))
}
