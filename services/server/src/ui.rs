//! The dashboard: server-rendered pages (maud), kept live by server-sent events that carry
//! re-rendered fragments, and mutations through the JSON API with the session's CSRF token.
//! Assets are served by the server itself; nothing needs a build step beyond cargo.

pub mod alerts;
pub mod certificates;
pub mod channels;
pub mod charts;
pub mod cluster;
pub mod fleet;
pub mod session;
pub mod settings;
pub mod upgrades;

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use maud::{html, Markup, DOCTYPE};

use crate::app::AppState;
use crate::http::auth::{session_cookie, Principal};
use crate::http::error::ApiError;
use crate::store;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/login", get(session::login_page))
        .route("/signup", get(session::signup_page))
        .route("/ui/session", axum::routing::post(session::create).delete(session::destroy))
        .route("/fleet", get(fleet::page))
        .route("/clusters/{id}", get(cluster::page))
        .route("/alerts", get(alerts::page))
        .route("/channels", get(channels::page))
        .route("/certificates", get(certificates::page))
        .route("/upgrades", get(upgrades::page))
        .route("/upgrades/rollouts/{id}", get(upgrades::rollout_page))
        .route("/settings", get(settings::page))
        .route("/ui/live", get(fleet::live))
        .route("/ui/app.css", get(|| async { asset("text/css", include_str!("ui/app.css")) }))
        .route("/ui/app.js", get(|| async { asset("text/javascript", include_str!("ui/app.js")) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=300")], body).into_response()
}

async fn home(viewer: Option<Viewer>) -> Redirect {
    Redirect::to(if viewer.is_some() { "/fleet" } else { "/login" })
}

/// A logged-in dashboard user; pages without one redirect to the login page.
pub struct Viewer {
    pub principal: Principal,
    pub email: String,
    pub org_name: String,
    pub csrf: String,
}

impl Viewer {
    pub fn can_change(&self) -> bool {
        self.principal.role >= crate::domain::Role::Admin
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let to_login = || Redirect::to("/login").into_response();
        let cookie = session_cookie(&parts.headers).map(str::to_owned).ok_or_else(to_login)?;
        let principal = Principal::from_request_parts(parts, state).await.map_err(|e| match e {
            ApiError::Unauthenticated(_) => to_login(),
            other => error_page(&other),
        })?;
        let crate::domain::audit::Actor::User { id, .. } = principal.actor else { return Err(to_login()) };
        let mut conn = state.db.pool.acquire().await.map_err(|e| error_page(&e.into()))?;
        let email = store::accounts::user_email(&mut conn, id).await.ok().flatten().unwrap_or_default();
        let org_name = store::accounts::org_name(&mut conn, principal.org_id).await.ok().flatten().unwrap_or_default();
        Ok(Viewer { principal, email, org_name, csrf: crate::secrets::csrf_token(&cookie) })
    }
}

impl axum::extract::OptionalFromRequestParts<AppState> for Viewer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Option<Self>, Self::Rejection> {
        Ok(<Viewer as FromRequestParts<AppState>>::from_request_parts(parts, state).await.ok())
    }
}

/// An extractor of the API (`ApiQuery`, `ApiPath`) whose rejection is shown as an error page,
/// as everything else on the dashboard, instead of a problem document.
pub struct OnPage<E>(pub E);

impl<E: FromRequestParts<AppState, Rejection = ApiError>> FromRequestParts<AppState> for OnPage<E> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        E::from_request_parts(parts, state).await.map(OnPage).map_err(|e| error_page(&e))
    }
}

/// The page frame: navigation, the CSRF token for scripts, and the content.
pub fn layout(title: &str, viewer: Option<&Viewer>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(v) = viewer { meta name="csrf-token" content=(v.csrf); }
                title { (title) " · Meshfleet" }
                link rel="stylesheet" href="/ui/app.css";
                script src="/ui/app.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "Meshfleet" }
                    @if let Some(v) = viewer {
                        nav aria-label="Main" {
                            a href="/fleet" { "Fleet" }
                            a href="/alerts" { "Alerts" }
                            a href="/channels" { "Channels" }
                            a href="/certificates" { "Certificates" }
                            a href="/upgrades" { "Upgrades" }
                            a href="/settings" { "Settings" }
                        }
                        span.who { (v.email) " · " (v.org_name) " (" (v.principal.role.as_str()) ")" }
                        button.link type="button" data-logout { "Log out" }
                    }
                }
                main id="main" { (content) }
            }
        }
    }
}

/// A failure as a page a person understands: never a stack trace or raw JSON.
pub fn error_page(e: &ApiError) -> Response {
    let problem = e.problem();
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = layout(
        &problem.title,
        None,
        html! {
            section.card role="alert" {
                h1 { (problem.title) }
                p { (problem.detail.unwrap_or_default()) }
                p { a href="/fleet" { "Back to the fleet" } }
            }
        },
    );
    (status, body).into_response()
}

/// A page answer: the rendered page, or an error page.
pub type PageResult = Result<Markup, Response>;

pub fn page_error(e: impl Into<ApiError>) -> Response {
    error_page(&e.into())
}

/// Human time until `ms` (e.g. "in 3 d 4 h", "expired 2 h ago").
pub fn countdown(ms: i64, now: i64) -> String {
    let delta = (ms - now) / 1000;
    let abs = delta.unsigned_abs();
    let text = match abs {
        0..=3599 => format!("{} min", abs / 60),
        3600..=86_399 => format!("{} h {} min", abs / 3600, abs % 3600 / 60),
        _ => format!("{} d {} h", abs / 86_400, abs % 86_400 / 3600),
    };
    if delta >= 0 {
        format!("in {text}")
    } else {
        format!("expired {text} ago")
    }
}

/// Human time since `ms` (e.g. "3 min ago"); "just now" within a minute, or for a moment a
/// little ahead of `now` (another replica's clock).
pub fn ago(ms: i64, now: i64) -> String {
    if now - ms < 60_000 {
        "just now".into()
    } else {
        countdown(ms, now).replace("expired ", "")
    }
}

/// A moment as the dashboard writes it: UTC, to the second.
pub fn timestamp(ms: i64) -> String {
    crate::db::to_rfc3339(ms).format("%Y-%m-%d %H:%M:%S").to_string()
}
