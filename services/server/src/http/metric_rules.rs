//! Alerting on workloads' golden metrics: custom rules (`domain::metric_rules`) and the
//! organization's workload objectives (`domain::objectives`, judged by the built-in rules
//! `workload_success_rate` and `workload_latency`). Admins change them; everyone reads them.
//! Evaluation (`alerting::rules`) runs them with the other built-in rules, and their alerts
//! route, group and silence like any other.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::Principal;
use super::error::{ApiError, FieldError};
use super::extract::{ApiJson, ApiPath};
use super::problems::{BadRequest, Conflict, Forbidden, Internal, Invalid, JsonBody, NotFound, Unauthenticated};
use crate::app::AppState;
use crate::db::to_rfc3339;
use crate::domain::health::Severity;
use crate::domain::labels::Selector;
use crate::domain::metric_rules::{self, Comparison, Metric, MetricRule};
use crate::domain::objectives::{self, Objectives};
use crate::domain::{schema, MetricRuleId, Role};
use crate::store::{self, audit};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_metric_rules, create_metric_rule))
        .routes(routes!(get_metric_rule, replace_metric_rule, delete_metric_rule))
        .routes(routes!(get_objectives, set_objectives))
}

/// A custom alert rule: for each workload of the clusters `cluster_selector` picks (and, when
/// given, of one namespace and one workload), `metric` over the last `window_seconds` of
/// complete minutes is compared with `threshold`; the alert (alertname: `name`, object
/// `namespace/workload`) fires once the comparison has held for `for_seconds`. A workload
/// without requests in the window has no success rate or latency, so those rules skip it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MetricRuleView {
    pub id: MetricRuleId,
    pub name: String,
    /// A Kubernetes label selector over cluster labels (`env=prod,tier in (web)`); empty: all.
    pub cluster_selector: String,
    pub namespace: Option<String>,
    pub workload: Option<String>,
    pub metric: Metric,
    pub comparison: Comparison,
    /// Success rate from 0 to 1, requests per second, or milliseconds.
    pub threshold: f64,
    pub window_seconds: i64,
    pub for_seconds: i64,
    pub severity: Severity,
    pub enabled: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<MetricRule> for MetricRuleView {
    fn from(r: MetricRule) -> Self {
        MetricRuleView {
            id: r.id,
            name: r.name,
            cluster_selector: r.cluster_selector.0,
            namespace: r.namespace,
            workload: r.workload,
            metric: r.metric,
            comparison: r.comparison,
            threshold: r.threshold,
            window_seconds: r.window_ms / 1000,
            for_seconds: r.for_ms / 1000,
            severity: r.severity,
            enabled: r.enabled,
            created_at: to_rfc3339(r.created_at),
            updated_at: to_rfc3339(r.updated_at),
        }
    }
}

/// A rule as created or replaced; what is left out takes the documented default.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricRuleRequest {
    /// 1 to 63 of `[a-z0-9_]`, starting with a letter; unique in the organization and not a
    /// built-in rule's name (a taken name: 409 `name-taken`).
    #[schema(pattern = "^[a-z][a-z0-9_]{0,62}$")]
    pub name: String,
    /// Default: every cluster.
    #[serde(default)]
    #[schema(schema_with = schema::selector)]
    pub cluster_selector: String,
    /// Default: every namespace. 1 to 253 characters, no control characters.
    #[schema(min_length = 1, max_length = 253, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub namespace: Option<String>,
    /// Default: every workload (e.g. `Deployment/web`). 1 to 253 characters, no control
    /// characters.
    #[schema(min_length = 1, max_length = 253, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub workload: Option<String>,
    pub metric: Metric,
    pub comparison: Comparison,
    pub threshold: f64,
    /// Whole minutes: 60 to 3,600 (default 300).
    #[schema(minimum = 60, maximum = 3600, multiple_of = 60)]
    pub window_seconds: Option<i64>,
    /// 0 to 86,400 (default 60).
    #[schema(minimum = 0, maximum = 86400)]
    pub for_seconds: Option<i64>,
    /// Default `warning`.
    pub severity: Option<Severity>,
    /// Default true.
    pub enabled: Option<bool>,
}

/// A namespace or workload filter: present means 1 to 253 characters, no control characters.
fn filter(value: Option<String>, field: &'static str, errors: &mut Vec<FieldError>) -> Option<String> {
    let v = value?;
    if v.is_empty() || v.chars().count() > 253 || v.chars().any(char::is_control) {
        errors.push(FieldError::new(field, "must be 1 to 253 characters without control characters"));
    }
    Some(v)
}

async fn checked(
    conn: &mut store::Conn,
    auth: &Principal,
    req: MetricRuleRequest,
    id: MetricRuleId,
    created_at: i64,
    now: i64,
) -> Result<MetricRule, ApiError> {
    let mut errors = Vec::new();
    let existing = store::metric_rules::list(conn, auth.org_id).await?;
    let name = metric_rules::parse_name(&req.name).map_err(|e| errors.push(FieldError::new("name", e))).ok();
    if !existing.iter().any(|r| r.id == id) && existing.len() >= metric_rules::MAX_RULES {
        errors.push(FieldError::new("name", format!("an organization has at most {} metric rules", metric_rules::MAX_RULES)));
    }
    let selector = req.cluster_selector.parse::<Selector>().map_err(|e| errors.push(FieldError::new("cluster_selector", e.message))).ok();
    let namespace = filter(req.namespace, "namespace", &mut errors);
    let workload = filter(req.workload, "workload", &mut errors);
    let threshold = metric_rules::check_threshold(req.metric, req.threshold).map_err(|e| errors.push(FieldError::new("threshold", e))).unwrap_or_default();
    let window_ms = match req.window_seconds.map(|s| s.saturating_mul(1000)) {
        None => metric_rules::DEFAULT_WINDOW_MS,
        Some(ms) if (metric_rules::WINDOW_MS.0..=metric_rules::WINDOW_MS.1).contains(&ms) && ms % 60_000 == 0 => ms,
        Some(_) => {
            errors.push(FieldError::new("window_seconds", "must be whole minutes from 60 to 3600 seconds"));
            0
        }
    };
    let for_ms = match req.for_seconds.map(|s| s.saturating_mul(1000)) {
        None => metric_rules::DEFAULT_FOR_MS,
        Some(ms) if (0..=metric_rules::MAX_FOR_MS).contains(&ms) => ms,
        Some(_) => {
            errors.push(FieldError::new("for_seconds", "must be from 0 to 86400"));
            0
        }
    };
    let (Some(name), Some(selector), true) = (name, selector, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    if existing.iter().any(|r| r.name == name && r.id != id) {
        let detail = format!("a metric rule named {name:?} exists");
        return Err(ApiError::Conflict { kind: "name-taken", detail, field: Some("name".into()) });
    }
    Ok(MetricRule {
        id,
        org_id: auth.org_id,
        name,
        cluster_selector: (req.cluster_selector, selector),
        namespace,
        workload,
        metric: req.metric,
        comparison: req.comparison,
        threshold,
        window_ms,
        for_ms,
        severity: req.severity.unwrap_or(Severity::Warning),
        enabled: req.enabled.unwrap_or(true),
        created_at,
        updated_at: now,
    })
}

async fn find(conn: &mut store::Conn, auth: &Principal, id: MetricRuleId) -> Result<MetricRule, ApiError> {
    store::metric_rules::get(conn, auth.org_id, id).await?.ok_or(ApiError::NotFound("metric rule"))
}

/// The organization's custom metric rules, by name.
#[utoipa::path(get, path = "/api/v1/metric-rules", tag = "alert-rules",
    responses((status = 200, body = Vec<MetricRuleView>), Unauthenticated, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn list_metric_rules(State(state): State<AppState>, auth: Principal) -> Result<Json<Vec<MetricRuleView>>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    Ok(Json(store::metric_rules::list(&mut conn, auth.org_id).await?.into_iter().map(Into::into).collect()))
}

/// Creates a custom metric rule (admins).
#[utoipa::path(post, path = "/api/v1/metric-rules", tag = "alert-rules", request_body = MetricRuleRequest,
    responses((status = 201, body = MetricRuleView), JsonBody, Unauthenticated, Forbidden, Conflict, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn create_metric_rule(
    State(state): State<AppState>,
    auth: Principal,
    ApiJson(req): ApiJson<MetricRuleRequest>,
) -> Result<(StatusCode, Json<MetricRuleView>), ApiError> {
    auth.require(Role::Admin)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    let rule = checked(&mut tx, &auth, req, MetricRuleId::new(), now, now).await?;
    store::metric_rules::upsert(&mut tx, &rule).await?;
    let view = MetricRuleView::from(rule);
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "metric_rule.create", ("metric_rule", view.id.to_string()), super::audit::details(&view)).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// One custom metric rule.
#[utoipa::path(get, path = "/api/v1/metric-rules/{id}", tag = "alert-rules",
    params(("id" = MetricRuleId, Path, description = "Rule id")),
    responses((status = 200, body = MetricRuleView), BadRequest, Unauthenticated, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, rule_id = %id))]
async fn get_metric_rule(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<MetricRuleId>) -> Result<Json<MetricRuleView>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    Ok(Json(find(&mut conn, &auth, id).await?.into()))
}

/// Replaces a custom metric rule (admins). Renamed, its open alerts resolve and new ones open
/// under the new name.
#[utoipa::path(put, path = "/api/v1/metric-rules/{id}", tag = "alert-rules", request_body = MetricRuleRequest,
    params(("id" = MetricRuleId, Path, description = "Rule id")),
    responses((status = 200, body = MetricRuleView), JsonBody, BadRequest, Unauthenticated, Forbidden, NotFound, Conflict, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, rule_id = %id))]
async fn replace_metric_rule(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath(id): ApiPath<MetricRuleId>,
    ApiJson(req): ApiJson<MetricRuleRequest>,
) -> Result<Json<MetricRuleView>, ApiError> {
    auth.require(Role::Admin)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    let old = find(&mut tx, &auth, id).await?;
    let rule = checked(&mut tx, &auth, req, id, old.created_at, now).await?;
    store::metric_rules::upsert(&mut tx, &rule).await?;
    let view = MetricRuleView::from(rule);
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "metric_rule.update", ("metric_rule", id.to_string()), super::audit::details(&view)).await?;
    tx.commit().await?;
    Ok(Json(view))
}

/// Deletes a custom metric rule (admins); its open alerts resolve.
#[utoipa::path(delete, path = "/api/v1/metric-rules/{id}", tag = "alert-rules",
    params(("id" = MetricRuleId, Path, description = "Rule id")),
    responses((status = 204), BadRequest, Unauthenticated, Forbidden, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, rule_id = %id))]
async fn delete_metric_rule(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<MetricRuleId>) -> Result<StatusCode, ApiError> {
    auth.require(Role::Admin)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    let rule = find(&mut tx, &auth, id).await?;
    store::metric_rules::delete(&mut tx, auth.org_id, id).await?;
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "metric_rule.delete", ("metric_rule", id.to_string()), serde_json::json!({ "name": rule.name }))
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The organization's workload objectives (until an admin sets them: a 99% success rate, no
/// latency objective). The built-in rules `workload_success_rate` and `workload_latency` alert on
/// each workload that misses its objective over 5 minutes of complete minutes, after their "for"
/// (5 minutes by default; `PUT /api/v1/alert-rules/{rule}` changes it, the severity, or turns
/// them off).
#[utoipa::path(get, path = "/api/v1/workload-objectives", tag = "alert-rules",
    responses((status = 200, body = Objectives), Unauthenticated, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn get_objectives(State(state): State<AppState>, auth: Principal) -> Result<Json<Objectives>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    Ok(Json(store::metric_rules::objectives(&mut conn, auth.org_id).await?))
}

/// Sets the organization's workload objectives (admins): the defaults, and overrides for the
/// clusters a label selector picks (the first that matches wins; what it leaves out is the
/// default's).
#[utoipa::path(put, path = "/api/v1/workload-objectives", tag = "alert-rules", request_body = Objectives,
    responses((status = 200, body = Objectives), JsonBody, Unauthenticated, Forbidden, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn set_objectives(State(state): State<AppState>, auth: Principal, ApiJson(req): ApiJson<Objectives>) -> Result<Json<Objectives>, ApiError> {
    auth.require(Role::Admin)?;
    objectives::check(&req).map_err(|e| ApiError::Validation(e.into_iter().map(|(f, m)| FieldError::new(f, m)).collect()))?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    store::metric_rules::set_objectives(&mut tx, auth.org_id, &req, now).await?;
    let target = ("organization", auth.org_id.to_string());
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "workload_objectives.update", target, super::audit::details(&req)).await?;
    tx.commit().await?;
    Ok(Json(req))
}
