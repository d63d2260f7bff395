//! Logging in, for the API and the dashboard alike: the password check (throttled per account
//! and per client address, counted before the password is verified) and the session it opens.

use std::net::SocketAddr;

use crate::app::AppState;
use crate::config::ms;
use crate::domain::{Email, OrgId, Role, SessionId, UserId};
use crate::http::error::ApiError;
use crate::secrets;
use crate::store;
use crate::throttle;

/// Checks e-mail and password, throttled per account and per client address.
/// `organization`: the one to act in; by default the user's first.
pub async fn check_password(state: &AppState, peer: SocketAddr, email: &str, password: String, organization: Option<OrgId>) -> Result<Login, ApiError> {
    let invalid = ApiError::Unauthenticated("wrong e-mail or password");
    let email = email.parse::<Email>().map_err(|e| ApiError::field("email", e))?;
    let cfg = &state.config;
    let account_key = format!("account:{}", email.as_str());
    let address_key = format!("address:{}", peer.ip());
    let subjects = [(account_key.as_str(), cfg.login_max_failures_per_account), (address_key.as_str(), cfg.login_max_failures_per_address)];
    // Counted before the password is checked, so the right password past the limit still
    // waits and parallel guesses cannot all pass before the first failure is recorded.
    let window = cfg.login_failure_window;
    let reservation = match throttle::reserve(&state.db, &subjects, window, state.clock.now_ms()).await {
        Err(e @ ApiError::TooManyRequests { .. }) => {
            state.metrics.logins_throttled.inc();
            return Err(e);
        }
        other => other?,
    };
    let mut conn = state.db.pool.acquire().await?;
    let user = store::accounts::find_user_by_email(&mut conn, &email).await?;
    let stored = user.as_ref().map(|u| u.password_hash.clone()).unwrap_or_else(|| secrets::dummy_password_hash().to_owned());
    let ok = tokio::task::spawn_blocking(move || secrets::verify_password(&password, &stored)).await.map_err(anyhow::Error::from)?;
    // A wrong password keeps its reservation: that is the failure counted.
    let Some(user) = user.filter(|_| ok) else {
        return Err(invalid);
    };
    reservation.release(&mut conn).await?;

    let memberships = store::accounts::memberships_of(&mut conn, user.id).await?;
    let membership = match organization {
        Some(org) => memberships.iter().find(|m| m.org_id == org),
        None => memberships.first(),
    }
    .ok_or_else(|| ApiError::Forbidden("you are not a member of that organization".into()))?;
    Ok(Login { user: user.id, org: membership.org_id, role: membership.role })
}

/// A user who proved their password, and the organization they act in.
pub struct Login {
    pub user: UserId,
    pub org: OrgId,
    pub role: Role,
}

/// A new login session (its refresh tokens rotate within it; logging out ends it).
pub async fn create_session(state: &AppState, conn: &mut store::Conn, login: &Login, now: i64) -> Result<SessionId, ApiError> {
    let session = SessionId::new();
    store::sessions::create(conn, session, login.org, login.user, now, now + ms(state.config.refresh_token_ttl)).await?;
    Ok(session)
}
