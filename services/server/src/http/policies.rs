//! Notification policies of the caller's organization: which channels alerts go to and how
//! they are grouped (`domain::policies`). Admins create, replace and delete them; everyone
//! reads them. Routing itself is `alerting::routing`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::Principal;
use super::error::{ApiError, FieldError};
use super::extract::{ApiJson, ApiPath};
use super::problems::{BadRequest, Forbidden, Internal, Invalid, JsonBody, NotFound, Unauthenticated};
use crate::app::AppState;
use crate::db::to_rfc3339;
use crate::domain::policies::{self, GroupBy, Policy, Timing};
use crate::domain::silences::{MatcherSpec, Matchers};
use crate::domain::{parse_display_name, schema, ChannelId, PolicyId, Role};
use crate::store::{self, audit};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_policies, create_policy)).routes(routes!(get_policy, replace_policy, delete_policy))
}

/// A notification policy. Policies are tried in `position` order; the first whose matchers all
/// match an alert routes it to its channels, and so do later matching ones while each says
/// `continue`. Alerts no policy takes go to every enabled channel, each alert on its own, at
/// once, and again every 4 hours while it fires.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NotificationPolicy {
    pub id: PolicyId,
    pub name: String,
    pub position: i64,
    /// All must match an alert's labels (its cluster's labels, `cluster`, `check`, `object`,
    /// `alertname`, `severity`); none at all matches every alert.
    pub matchers: Vec<MatcherSpec>,
    pub channel_ids: Vec<ChannelId>,
    /// Alerts with the same values of these labels are notified together; `["..."]`: each
    /// alert alone; `[]`: all in one group.
    pub group_by: Vec<String>,
    /// How long a new group waits for more alerts before its first notification.
    pub group_wait_seconds: i64,
    /// How long a group waits after a notification before it tells of alerts that joined or
    /// resolved.
    pub group_interval_seconds: i64,
    /// How long after a notification a group that still fires is notified again.
    pub repeat_interval_seconds: i64,
    /// Whether alerts it matches go on to the policies after it.
    #[serde(rename = "continue")]
    pub continue_matching: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<Policy> for NotificationPolicy {
    fn from(p: Policy) -> Self {
        NotificationPolicy {
            id: p.id,
            name: p.name,
            position: p.position,
            matchers: p.matchers.specs(),
            channel_ids: p.channels,
            group_by: p.group_by.names(),
            group_wait_seconds: p.timing.group_wait / 1000,
            group_interval_seconds: p.timing.group_interval / 1000,
            repeat_interval_seconds: p.timing.repeat_interval / 1000,
            continue_matching: p.continue_matching,
            created_at: to_rfc3339(p.created_at),
            updated_at: to_rfc3339(p.updated_at),
        }
    }
}

/// A policy as created or replaced; what is left out takes the documented default.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRequest {
    #[schema(schema_with = schema::display_name)]
    pub name: String,
    /// Default: after every other policy. 0 to 1,000,000.
    #[schema(minimum = 0, maximum = 1_000_000)]
    pub position: Option<i64>,
    /// 0 to 32 matchers (default none: every alert).
    #[serde(default)]
    #[schema(max_items = 32)]
    pub matchers: Vec<MatcherSpec>,
    /// 1 to 20 of the organization's alert channels.
    #[schema(min_items = 1, max_items = 20)]
    pub channel_ids: Vec<ChannelId>,
    /// Default `["alertname", "cluster"]`; at most 20 labels, or `["..."]`.
    #[schema(max_items = 20)]
    pub group_by: Option<Vec<String>>,
    /// Default 0; at most 3,600.
    #[schema(minimum = 0, maximum = 3600)]
    pub group_wait_seconds: Option<i64>,
    /// Default 300 (5 minutes); 1 to 86,400.
    #[schema(minimum = 1, maximum = 86400)]
    pub group_interval_seconds: Option<i64>,
    /// Default 14,400 (4 hours); 60 to 2,592,000 (30 days), and not less than the interval.
    #[schema(minimum = 60, maximum = 2592000)]
    pub repeat_interval_seconds: Option<i64>,
    /// Default false.
    #[serde(rename = "continue", default)]
    pub continue_matching: bool,
}

/// A duration in seconds from the request, checked against `(min, max)` in ms.
fn seconds(value: Option<i64>, default_ms: i64, (min, max): (i64, i64), field: &'static str, errors: &mut Vec<FieldError>) -> i64 {
    let Some(s) = value else { return default_ms };
    match s.checked_mul(1000) {
        Some(ms) if (min..=max).contains(&ms) => ms,
        _ => {
            errors.push(FieldError::new(field, format!("must be from {} to {} seconds", min / 1000, max / 1000)));
            default_ms
        }
    }
}

/// Checks a request into a policy (with the given id and creation time).
async fn checked(conn: &mut store::Conn, auth: &Principal, req: PolicyRequest, id: PolicyId, created_at: i64, now: i64) -> Result<Policy, ApiError> {
    let mut errors = Vec::new();
    let name = parse_display_name(&req.name).map_err(|e| errors.push(FieldError::new("name", e))).ok();
    let matchers = Matchers::parse_route(&req.matchers).map_err(|e| errors.extend(e.into_iter().map(|(f, m)| FieldError::new(f, m)))).ok();
    let names: Vec<String> = req.group_by.unwrap_or_else(|| policies::DEFAULT_GROUP_BY.map(String::from).to_vec());
    let group_by = GroupBy::parse(&names).map_err(|(f, m)| errors.push(FieldError::new(f, m))).ok();
    let channels = store::alert_channels::list(conn, auth.org_id).await?;
    if req.channel_ids.is_empty() || req.channel_ids.len() > policies::MAX_CHANNELS {
        errors.push(FieldError::new("channel_ids", format!("must name 1 to {} alert channels", policies::MAX_CHANNELS)));
    }
    for (i, id) in req.channel_ids.iter().enumerate() {
        if !channels.iter().any(|c| c.id == *id) {
            errors.push(FieldError::new(format!("channel_ids[{i}]"), "is not an alert channel of this organization"));
        } else if req.channel_ids[..i].contains(id) {
            errors.push(FieldError::new(format!("channel_ids[{i}]"), "is listed twice"));
        }
    }
    let timing = Timing {
        group_wait: seconds(req.group_wait_seconds, policies::DEFAULT_GROUP_WAIT_MS, (0, policies::MAX_GROUP_WAIT_MS), "group_wait_seconds", &mut errors),
        group_interval: seconds(
            req.group_interval_seconds,
            policies::DEFAULT_GROUP_INTERVAL_MS,
            policies::GROUP_INTERVAL_MS,
            "group_interval_seconds",
            &mut errors,
        ),
        repeat_interval: seconds(
            req.repeat_interval_seconds,
            policies::DEFAULT_REPEAT_INTERVAL_MS,
            policies::REPEAT_INTERVAL_MS,
            "repeat_interval_seconds",
            &mut errors,
        ),
    };
    if timing.repeat_interval < timing.group_interval {
        errors.push(FieldError::new("repeat_interval_seconds", "must not be less than group_interval_seconds"));
    }
    let existing = store::policies::list(conn, auth.org_id).await?;
    let position = match req.position {
        Some(p) if (0..=1_000_000).contains(&p) => p,
        Some(_) => {
            errors.push(FieldError::new("position", "must be from 0 to 1000000"));
            0
        }
        None => existing.iter().filter(|p| p.id != id).map(|p| p.position + 1).max().unwrap_or(0).min(1_000_000),
    };
    if !existing.iter().any(|p| p.id == id) && existing.len() >= policies::MAX_POLICIES {
        errors.push(FieldError::new("name", format!("an organization has at most {} notification policies", policies::MAX_POLICIES)));
    }
    let (Some(name), Some(matchers), Some(group_by), true) = (name, matchers, group_by, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    Ok(Policy {
        id,
        org_id: auth.org_id,
        name,
        position,
        matchers,
        channels: req.channel_ids,
        group_by,
        timing,
        continue_matching: req.continue_matching,
        created_at,
        updated_at: now,
    })
}

async fn find(conn: &mut store::Conn, auth: &Principal, id: PolicyId) -> Result<Policy, ApiError> {
    store::policies::get(conn, auth.org_id, id).await?.ok_or(ApiError::NotFound("notification policy"))
}

/// The organization's notification policies, in routing order.
#[utoipa::path(get, path = "/api/v1/notification-policies", tag = "notification-policies",
    responses((status = 200, body = Vec<NotificationPolicy>), Unauthenticated, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn list_policies(State(state): State<AppState>, auth: Principal) -> Result<Json<Vec<NotificationPolicy>>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    Ok(Json(store::policies::list(&mut conn, auth.org_id).await?.into_iter().map(Into::into).collect()))
}

/// Creates a notification policy (admins).
#[utoipa::path(post, path = "/api/v1/notification-policies", tag = "notification-policies", request_body = PolicyRequest,
    responses((status = 201, body = NotificationPolicy), JsonBody, Unauthenticated, Forbidden, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn create_policy(
    State(state): State<AppState>,
    auth: Principal,
    ApiJson(req): ApiJson<PolicyRequest>,
) -> Result<(StatusCode, Json<NotificationPolicy>), ApiError> {
    auth.require(Role::Admin)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    let policy = checked(&mut tx, &auth, req, PolicyId::new(), now, now).await?;
    store::policies::upsert(&mut tx, &policy).await?;
    let view = NotificationPolicy::from(policy);
    audit::record(
        &mut tx,
        auth.org_id,
        now,
        &auth.actor,
        "notification_policy.create",
        ("notification_policy", view.id.to_string()),
        super::audit::details(&view),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// One notification policy.
#[utoipa::path(get, path = "/api/v1/notification-policies/{id}", tag = "notification-policies",
    params(("id" = PolicyId, Path, description = "Policy id")),
    responses((status = 200, body = NotificationPolicy), BadRequest, Unauthenticated, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, policy_id = %id))]
async fn get_policy(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<PolicyId>) -> Result<Json<NotificationPolicy>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    Ok(Json(find(&mut conn, &auth, id).await?.into()))
}

/// Replaces a notification policy (admins). Its groups start afresh: alerts firing now are
/// notified again by the policy as it now is.
#[utoipa::path(put, path = "/api/v1/notification-policies/{id}", tag = "notification-policies", request_body = PolicyRequest,
    params(("id" = PolicyId, Path, description = "Policy id")),
    responses((status = 200, body = NotificationPolicy), JsonBody, BadRequest, Unauthenticated, Forbidden, NotFound, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, policy_id = %id))]
async fn replace_policy(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath(id): ApiPath<PolicyId>,
    ApiJson(req): ApiJson<PolicyRequest>,
) -> Result<Json<NotificationPolicy>, ApiError> {
    auth.require(Role::Admin)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    let old = find(&mut tx, &auth, id).await?;
    let policy = checked(&mut tx, &auth, req, id, old.created_at, now).await?;
    store::policies::upsert(&mut tx, &policy).await?;
    store::policies::forget_groups_of(&mut tx, auth.org_id, &id.to_string()).await?;
    let view = NotificationPolicy::from(policy);
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "notification_policy.update", ("notification_policy", id.to_string()), super::audit::details(&view))
        .await?;
    tx.commit().await?;
    Ok(Json(view))
}

/// Deletes a notification policy (admins); the alerts it took follow the other policies.
#[utoipa::path(delete, path = "/api/v1/notification-policies/{id}", tag = "notification-policies",
    params(("id" = PolicyId, Path, description = "Policy id")),
    responses((status = 204), BadRequest, Unauthenticated, Forbidden, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, policy_id = %id))]
async fn delete_policy(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<PolicyId>) -> Result<StatusCode, ApiError> {
    auth.require(Role::Admin)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    let policy = find(&mut tx, &auth, id).await?;
    store::policies::delete(&mut tx, auth.org_id, id).await?;
    let target = ("notification_policy", id.to_string());
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "notification_policy.delete", target, serde_json::json!({ "name": policy.name })).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
