//! The one authentication extractor: `Authorization: Bearer` carrying either an access JWT
//! (checked against its live session and current membership) or an API token. Handlers get a
//! `Principal` scoped to exactly one organization.

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts};
use sha2::Digest;

use super::error::ApiError;
use crate::app::AppState;
use crate::domain::audit::Actor;
use crate::domain::{OrgId, Role};
use crate::jwt::VerifyError;
use crate::secrets::{token_hash, TokenKind};
use crate::store;

#[derive(Debug, Clone, Copy)]
pub struct Principal {
    pub org_id: OrgId,
    pub role: Role,
    pub actor: Actor,
}

impl Principal {
    /// 403 unless the principal holds at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!("this needs the {} role; you have {}", role.as_str(), self.role.as_str())))
        }
    }
}

/// Last-use times of API tokens are written at most this often, so a busy automation does
/// not turn every read into a write.
const TOUCH_INTERVAL_MS: i64 = 60_000;

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            return from_cookie(parts, state).await;
        }
        let token = bearer(parts)?;
        let now = state.clock.now_ms();
        state.read_cache.principal(token, now, check_bearer(state, token, now)).await
    }
}

/// The token of an `Authorization: Bearer` header.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthenticated("the Authorization header must be Bearer <token>"))
}

/// A service operator: the bearer token whose SHA-256 is the `operator_token_sha256` setting.
/// Operators run the service for every organization (the release catalog); they are no
/// organization's members, and organization tokens never open their API.
#[derive(Debug, Clone, Copy)]
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        let Some(want) = state.config.operator_token_sha256 else {
            return Err(ApiError::Forbidden("the operator API is closed on this service (operator_token_sha256 is not set)".into()));
        };
        let got = sha2::Sha256::digest(token.as_bytes());
        // Without early exit, though a digest's prefix tells nothing of the token anyway.
        if got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0 {
            Ok(Operator)
        } else {
            Err(ApiError::Unauthenticated("the operator token is not valid"))
        }
    }
}

/// Who a bearer token stands for, and until when (ms).
async fn check_bearer(state: &AppState, token: &str, now: i64) -> Result<(Principal, i64), ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    if token.starts_with(TokenKind::Api.prefix()) {
        let found = store::api_tokens::authenticate(&mut conn, &token_hash(token), now)
            .await?
            .ok_or(ApiError::Unauthenticated("the API token is unknown, expired or revoked"))?;
        if found.last_used_at.is_none_or(|t| now - t > TOUCH_INTERVAL_MS) {
            store::api_tokens::touch(&mut conn, found.id, now).await?;
        }
        return Ok((Principal { org_id: found.org_id, role: found.role, actor: Actor::ApiToken(found.id) }, found.expires_at));
    }

    let claims = match state.keys.verify(token, now) {
        // A key created by another replica since we loaded ours.
        Err(VerifyError::UnknownKey(kid)) => {
            state.keys.reload_if_stale(&state.db, &state.sealer).await.map_err(|e| ApiError::Internal(e.into()))?;
            if !state.keys.knows(&kid) {
                return Err(ApiError::Unauthenticated("the access token is invalid or expired"));
            }
            state.keys.verify(token, now)
        }
        other => other,
    }
    .map_err(|_| ApiError::Unauthenticated("the access token is invalid or expired"))?;
    let role = store::sessions::live_role(&mut conn, claims.sid, claims.sub, claims.org, now)
        .await?
        .ok_or(ApiError::Unauthenticated("the session has ended; log in again"))?;
    let principal = Principal { org_id: claims.org, role, actor: Actor::User { id: claims.sub, session: claims.sid } };
    Ok((principal, claims.exp * 1000))
}

/// The dashboard's cookie, the other way in (bearer tokens keep working as before).
pub const SESSION_COOKIE: &str = "mf_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The value of the dashboard session cookie, if the request carries one.
pub fn session_cookie(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
        .filter(|t| t.starts_with(TokenKind::Ui.prefix()))
}

/// A principal from the dashboard's session cookie. Requests that change anything must also
/// carry the session's CSRF token in a header, which another site cannot know.
async fn from_cookie(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    let token = session_cookie(&parts.headers).ok_or(ApiError::Unauthenticated("send Authorization: Bearer <token>"))?;
    if !parts.method.is_safe() {
        check_csrf(parts, token)?;
    }
    let now = state.clock.now_ms();
    let mut conn = state.db.pool.acquire().await?;
    let (session, user, org) =
        store::ui_sessions::find(&mut conn, &token_hash(token)).await?.ok_or(ApiError::Unauthenticated("the session has ended; log in again"))?;
    let role = store::sessions::live_role(&mut conn, session, user, org, now).await?.ok_or(ApiError::Unauthenticated("the session has ended; log in again"))?;
    Ok(Principal { org_id: org, role, actor: Actor::User { id: user, session } })
}

fn check_csrf(parts: &Parts, cookie: &str) -> Result<(), ApiError> {
    let sent = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    if sent == crate::secrets::csrf_token(cookie) {
        Ok(())
    } else {
        Err(ApiError::Forbidden("missing or wrong CSRF token; reload the page".into()))
    }
}

/// A principal for a request that changes state whatever its method (a GET that mints a
/// token). The session cookie alone is not enough: `SameSite=Lax` sends it on another site's
/// top-level navigation, so the CSRF token is required as for any mutation. Bearer
/// credentials are never sent by a browser on its own and need nothing more.
pub struct Deliberate(pub Principal);

impl FromRequestParts<AppState> for Deliberate {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            if let Some(cookie) = session_cookie(&parts.headers) {
                check_csrf(parts, cookie)?;
            }
        }
        Principal::from_request_parts(parts, state).await.map(Deliberate)
    }
}
