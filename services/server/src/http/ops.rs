//! Operational endpoints: liveness, readiness (the database answers) and Prometheus metrics.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::ApiError;
use super::problems::Unavailable;
use crate::app::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz)).routes(routes!(metrics))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
}

/// The database is reachable.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, body = Health), Unavailable))]
#[tracing::instrument(skip_all)]
async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    match state.db.ping().await {
        Ok(()) => Ok(Json(Health { status: "ready".into(), version: env!("CARGO_PKG_VERSION").into() })),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: database unreachable");
            Err(ApiError::Unavailable("the database is unreachable"))
        }
    }
}

/// Prometheus text exposition: requests by route and status, latency, database pool.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "text/plain", body = String)))]
#[tracing::instrument(skip_all)]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let pool = &state.db.pool;
    let idle = pool.num_idle() as i64;
    state.metrics.db_pool.with_label_values(&["idle"]).set(idle);
    state.metrics.db_pool.with_label_values(&["in_use"]).set(i64::from(pool.size()) - idle);
    state.metrics.db_pool.with_label_values(&["max"]).set(i64::from(pool.options().get_max_connections()));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}
