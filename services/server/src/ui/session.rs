//! Sign-up and log-in pages, and the cookie session behind them. Passwords go through the same
//! checks and throttling as the API's log-in.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::html;

use super::{layout, Viewer};
use crate::app::AppState;
use crate::domain::audit::Actor;
use crate::http::accounts::LoginRequest;
use crate::http::auth::{Principal, SESSION_COOKIE};
use crate::http::error::ApiError;
use crate::http::extract::ApiJson;
use crate::login::{check_password, create_session};
use crate::secrets::{new_token, token_hash, TokenKind};
use crate::store;

fn auth_page(title: &str, action: &str, signup: bool) -> maud::Markup {
    layout(
        title,
        None,
        html! {
            section.card.narrow {
                h1 { (title) }
                form data-auth=(action) {
                    label for="email" { "E-mail" }
                    input id="email" name="email" type="email" autocomplete="email" required;
                    label for="password" { "Password" @if signup { " (at least 12 characters)" } }
                    input id="password" name="password" type="password" autocomplete=(if signup { "new-password" } else { "current-password" }) required minlength=(if signup { "12" } else { "1" });
                    @if signup {
                        label for="organization" { "Organization" }
                        input id="organization" name="organization" type="text" autocomplete="organization" required;
                    }
                    p.form-error role="alert" aria-live="polite" {}
                    button type="submit" { (title) }
                }
                @if signup {
                    p { "Have an account? " a href="/login" { "Log in" } }
                } @else {
                    p { "New here? " a href="/signup" { "Sign up" } }
                }
            }
        },
    )
}

pub async fn login_page() -> maud::Markup {
    auth_page("Log in", "login", false)
}

pub async fn signup_page() -> maud::Markup {
    auth_page("Sign up", "signup", true)
}

/// Logs in and sets the session cookie (HttpOnly, SameSite=Lax, Secure behind https).
pub async fn create(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let login = check_password(&state, peer, &req.email, req.password, req.organization_id).await?;
    let now = state.clock.now_ms();
    let token = new_token(TokenKind::Ui);
    let mut tx = state.db.begin().await?;
    let session = create_session(&state, &mut tx, &login, now).await?;
    store::ui_sessions::insert(&mut tx, &token_hash(&token), session, now).await?;
    tx.commit().await?;
    let secure = if state.config.public_url().starts_with("https://") { "; Secure" } else { "" };
    let cookie = format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}", state.config.refresh_token_ttl.as_secs());
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).map_err(anyhow::Error::from)?);
    Ok(response)
}

/// Logs out: ends the session (cookie and any tokens of it) and clears the cookie.
pub async fn destroy(State(state): State<AppState>, auth: Principal, _viewer: Option<Viewer>) -> Result<Response, ApiError> {
    if let Actor::User { session, .. } = auth.actor {
        let mut conn = state.db.pool.acquire().await?;
        store::sessions::revoke(&mut conn, session, state.clock.now_ms()).await?;
        crate::gateway::dispatch::access_changed(&state).await;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let clear = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0");
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&clear).map_err(anyhow::Error::from)?);
    Ok(response)
}
