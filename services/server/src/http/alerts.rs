//! Alerts of the caller's organization (firing now, pending, history) and its built-in rules,
//! which admins can turn off, re-severitise or give another "for" duration.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::Principal;
use super::error::ApiError;
use super::extract::{whole_number, ApiJson, ApiPath, ApiQuery};
use super::problems::{BadRequest, Forbidden, Internal, Invalid, JsonBody, NotFound, Unauthenticated};
use crate::alerting::rules::effective;
use crate::app::AppState;
use crate::db::to_rfc3339;
use crate::domain::alerting::{builtin_rule, AlertState, BUILTIN_RULES};
use crate::domain::health::Severity;
use crate::domain::silences::Silence;
use crate::domain::{AlertId, ClusterId, Role, SilenceId};
use crate::store::alerts::{Alert, RuleChange};
use crate::store::{self, audit};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_alerts)).routes(routes!(get_alert)).routes(routes!(list_rules)).routes(routes!(update_rule))
}

/// Which alerts to list.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertFilter {
    /// Pending and firing (the default).
    #[default]
    Open,
    Pending,
    Firing,
    Resolved,
    All,
}

impl AlertFilter {
    fn states(self) -> &'static [AlertState] {
        match self {
            AlertFilter::Open => &[AlertState::Pending, AlertState::Firing],
            AlertFilter::Pending => &[AlertState::Pending],
            AlertFilter::Firing => &[AlertState::Firing],
            AlertFilter::Resolved => &[AlertState::Resolved],
            AlertFilter::All => &[AlertState::Pending, AlertState::Firing, AlertState::Resolved],
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AlertQuery {
    /// Which alerts (default `open`: pending and firing).
    #[param(inline)]
    state: Option<AlertFilter>,
    /// Only this cluster's.
    cluster_id: Option<ClusterId>,
    /// Page size, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(format = Uuid)]
    cursor: Option<String>,
}

/// An alert: one rule's finding about one object of a cluster.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AlertView {
    pub id: AlertId,
    /// Stable over the alert's life (rule, cluster, object); PagerDuty's `dedup_key`.
    pub fingerprint: String,
    pub rule: String,
    pub cluster_id: ClusterId,
    pub object: String,
    pub severity: Severity,
    pub state: AlertState,
    pub summary: String,
    pub labels: std::collections::BTreeMap<String, String>,
    /// When the condition began.
    pub starts_at: chrono::DateTime<chrono::Utc>,
    pub fired_at: Option<chrono::DateTime<chrono::Utc>>,
    pub ends_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The active silences that match the alert now, muting its notifications (always empty
    /// for a resolved alert). Matchers see its labels with `alertname` (the rule) and `severity`.
    pub silenced_by: Vec<SilenceId>,
}

impl AlertView {
    /// The alert as shown at `now`, with the organization's `active` silences.
    fn new(a: Alert, active: &[Silence], now: i64) -> AlertView {
        let silenced_by = a.muted_by(active, now).iter().map(|s| s.id).collect();
        AlertView {
            id: a.id,
            fingerprint: a.fingerprint,
            rule: a.rule,
            cluster_id: a.cluster_id,
            object: a.object,
            severity: a.severity,
            state: a.state,
            summary: a.summary,
            labels: a.labels,
            starts_at: to_rfc3339(a.starts_at),
            fired_at: a.fired_at.map(to_rfc3339),
            ends_at: a.ends_at.map(to_rfc3339),
            silenced_by,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AlertPage {
    pub items: Vec<AlertView>,
    pub next_cursor: Option<String>,
}

/// The organization's alerts, newest first.
#[utoipa::path(get, path = "/api/v1/alerts", tag = "alerts", params(AlertQuery),
    responses((status = 200, body = AlertPage), BadRequest, Unauthenticated, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn list_alerts(State(state): State<AppState>, auth: Principal, ApiQuery(q): ApiQuery<AlertQuery>) -> Result<Json<AlertPage>, ApiError> {
    let limit = super::page_limit(q.limit, 100)?;
    let before = q.cursor.as_deref().map(|c| c.parse().map_err(|_| ApiError::field("cursor", "is not a cursor returned by this API"))).transpose()?;
    let mut conn = state.db.pool.acquire().await?;
    let rows = store::alerts::list(&mut conn, auth.org_id, q.state.unwrap_or_default().states(), q.cluster_id, before, limit + 1).await?;
    let (rows, next_cursor) = super::into_page(rows, limit, |a| a.id.to_string());
    let now = state.clock.now_ms();
    let active = store::silences::active(&mut conn, auth.org_id, now).await?;
    Ok(Json(AlertPage { items: rows.into_iter().map(|a| AlertView::new(a, &active, now)).collect(), next_cursor }))
}

/// One alert.
#[utoipa::path(get, path = "/api/v1/alerts/{id}", tag = "alerts", params(("id" = AlertId, Path, description = "Alert id")),
    responses((status = 200, body = AlertView), BadRequest, Unauthenticated, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, alert_id = %id))]
async fn get_alert(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<AlertId>) -> Result<Json<AlertView>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    let alert = store::alerts::get(&mut conn, auth.org_id, id).await?.ok_or(ApiError::NotFound("alert"))?;
    let now = state.clock.now_ms();
    let active = store::silences::active(&mut conn, auth.org_id, now).await?;
    Ok(Json(AlertView::new(alert, &active, now)))
}

/// A built-in rule as the organization runs it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RuleView {
    /// The health check whose findings it alerts on.
    pub rule: String,
    pub description: String,
    pub enabled: bool,
    /// The severity every alert of the rule gets; absent: each finding's own.
    pub severity: Option<Severity>,
    /// How long a finding must hold before its alert fires.
    pub for_seconds: u64,
}

fn rule_view(rule: &crate::domain::alerting::BuiltinRule, change: Option<&RuleChange>) -> RuleView {
    let e = effective(rule, change);
    RuleView { rule: rule.name.into(), description: rule.description.into(), enabled: e.enabled, severity: e.severity, for_seconds: (e.for_ms / 1000) as u64 }
}

/// The built-in rules.
#[utoipa::path(get, path = "/api/v1/alert-rules", tag = "alerts",
    responses((status = 200, body = Vec<RuleView>), Unauthenticated, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn list_rules(State(state): State<AppState>, auth: Principal) -> Result<Json<Vec<RuleView>>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    let changes = store::alerts::rule_changes(&mut conn, auth.org_id).await?;
    Ok(Json(BUILTIN_RULES.iter().map(|r| rule_view(r, changes.get(r.name))).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRuleRequest {
    pub enabled: bool,
    /// The severity every alert of the rule gets; absent or null: each finding's own.
    pub severity: Option<Severity>,
    /// How long a finding must hold before its alert fires (at most a day); absent or null:
    /// the rule's default.
    #[schema(maximum = 86400)]
    #[serde(default, deserialize_with = "whole_number")]
    pub for_seconds: Option<u32>,
}

/// Turns a built-in rule on or off, or changes its severity or "for" duration (admins).
#[utoipa::path(put, path = "/api/v1/alert-rules/{rule}", tag = "alerts", params(("rule" = String, Path, description = "Rule name, e.g. `agent`")),
    request_body = UpdateRuleRequest,
    responses((status = 200, body = RuleView), JsonBody, Unauthenticated, Forbidden, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn update_rule(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath(rule): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateRuleRequest>,
) -> Result<Json<RuleView>, ApiError> {
    auth.require(Role::Admin)?;
    let rule = builtin_rule(&rule).ok_or(ApiError::NotFound("alert rule"))?;
    if req.for_seconds.is_some_and(|s| s > 86_400) {
        return Err(ApiError::field("for_seconds", "must be at most 86400 (a day)"));
    }
    let change = RuleChange { disabled: !req.enabled, severity: req.severity, for_ms: req.for_seconds.map(|s| i64::from(s) * 1000) };
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    store::alerts::set_rule(&mut tx, auth.org_id, rule.name, &change, now).await?;
    let details = serde_json::json!({ "enabled": req.enabled, "severity": req.severity, "for_seconds": req.for_seconds });
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "alert_rule.update", ("alert_rule", rule.name.to_owned()), details).await?;
    tx.commit().await?;
    Ok(Json(rule_view(rule, Some(&change))))
}
