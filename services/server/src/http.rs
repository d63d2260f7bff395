//! The HTTP API: one router per resource, merged here with the cross-cutting layers
//! (tracing, metrics, body limit, security headers, problem+json fallbacks) and the generated OpenAPI document.

pub mod accounts;
pub mod agents;
pub mod alerts;
pub mod api_tokens;
pub mod audit;
pub mod auth;
pub mod certificates;
pub mod channels;
pub mod clusters;
pub mod commands;
pub mod error;
pub mod extract;
pub mod hardening;
pub mod health;
pub mod members;
pub mod metric_rules;
pub mod ops;
pub mod policies;
pub mod problems;
pub mod releases;
pub mod rollouts;
pub mod rotations;
pub mod silences;
pub mod timestamp;
pub mod trust;
pub mod upgrade_policies;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{middleware, Json, Router};
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;
use error::ApiError;

/// Request bodies above this are refused with 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The path of the OpenAPI document; the one route outside the document itself.
pub const OPENAPI_PATH: &str = "/api/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(title = "Meshfleet API", description = "Managed operations for service meshes across Kubernetes clusters."),
    modifiers(&BearerAuth),
    // AlertEvent is no route's body: it is what webhook channels receive, documented here.
    // The rollout actions are path parameters only, which utoipa does not collect.
    components(schemas(error::Problem, error::FieldError, crate::domain::alerting::AlertEvent, rollouts::RolloutAction, rollouts::ClusterAction))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some("An access token from /api/v1/login, or an API token (mft_...)")).build(),
            ),
        );
        components.add_security_scheme(
            "operator",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The service operators' token, whose SHA-256 is the operator_token_sha256 setting"))
                    .build(),
            ),
        );
    }
}

/// Every documented route, and the OpenAPI document describing exactly them.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(ops::router())
        .merge(accounts::router())
        .merge(members::router())
        .merge(api_tokens::router())
        .merge(clusters::router())
        .merge(health::router())
        .merge(agents::router())
        .merge(commands::router())
        .merge(releases::router())
        .merge(rollouts::router())
        .merge(upgrade_policies::router())
        .merge(audit::router())
        .merge(alerts::router())
        .merge(channels::router())
        .merge(silences::router())
        .merge(policies::router())
        .merge(metric_rules::router())
        .merge(trust::router())
        .merge(rotations::router())
        .merge(certificates::router())
        .split_for_parts()
}

pub fn router(state: AppState) -> Router {
    let (routes, openapi) = api();
    // Without the api role this listener serves only the operational endpoints.
    let routes = if state.config.roles.api { routes } else { ops::router().split_for_parts().0 };
    let openapi = Arc::new(openapi);
    routes
        .route(OPENAPI_PATH, get(move || async move { Json(openapi.as_ref().clone()) }))
        .merge(if state.config.roles.api { crate::ui::router() } else { Router::new() })
        .fallback(error::route_not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(hardening::own_errors))
        .layer(middleware::from_fn(hardening::security_headers))
        .layer(middleware::from_fn_with_state(state.clone(), crate::metrics::track))
        .layer(TraceLayer::new_for_http().make_span_with(request_span).on_response(record_status))
        .with_state(state)
}

/// The span of one request, named by its route (OpenTelemetry's HTTP server conventions), in
/// the trace its client started (`traceparent`), if any.
fn request_span(req: &axum::extract::Request) -> tracing::Span {
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or("unmatched", |p| p.as_str());
    let span = tracing::info_span!(
        target: crate::telemetry::TRACES,
        "HTTP request",
        otel.name = %format!("{} {route}", req.method()),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %req.method(),
        http.route = route,
        url.path = req.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    crate::telemetry::continue_trace(&span, req.headers());
    span
}

fn record_status(res: &axum::response::Response, _latency: std::time::Duration, span: &tracing::Span) {
    span.record("http.response.status_code", i64::from(res.status().as_u16()));
    if res.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// A validated page size.
pub(crate) fn page_limit(requested: Option<u32>, default: u32) -> Result<u32, ApiError> {
    match requested.unwrap_or(default) {
        n @ 1..=500 => Ok(n),
        _ => Err(ApiError::field("limit", "must be between 1 and 500")),
    }
}

/// Splits the `limit + 1` rows a keyset query fetched into the page and the cursor of the
/// next page (None on the last page).
pub(crate) fn into_page<T>(mut rows: Vec<T>, limit: u32, cursor_of: impl Fn(&T) -> String) -> (Vec<T>, Option<String>) {
    if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        let next = rows.last().map(cursor_of);
        (rows, next)
    } else {
        (rows, None)
    }
}

/// A page of a log paged by time-ordered ids, newest first (the audit log, a delivery log).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    /// Page size, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(format = Uuid)]
    pub cursor: Option<String>,
}

impl PageQuery {
    /// The id the page starts below.
    pub fn uuid_cursor(&self) -> Result<Option<uuid::Uuid>, ApiError> {
        self.cursor.as_deref().map(|c| c.parse::<uuid::Uuid>().map_err(|_| ApiError::field("cursor", "is not a cursor returned by this API"))).transpose()
    }
}
