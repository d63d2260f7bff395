//! Alert channels: where an organization's alerts are sent, their signing secrets (shown once
//! on creation and rotation, and on an admin's explicit reveal), a test event, and the
//! delivery log with redelivery. Secrets never appear in reads or the audit log.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::Principal;
use super::error::{ApiError, FieldError};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::problems::{BadRequest, Forbidden, Internal, Invalid, JsonBody, NotFound, Unauthenticated};
use crate::alerting::channels::{test_event, ChannelKind, PAGERDUTY_EVENTS_URL};
use crate::alerting::{signing, ssrf};
use crate::app::AppState;
use crate::db::to_rfc3339;
use crate::domain::{parse_display_name, schema, ChannelId, OrgId, Role};
use crate::store::alert_channels::{self, Channel};
use crate::store::{self, audit, notifications};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_channels, create_channel))
        .routes(routes!(get_channel, update_channel, delete_channel))
        .routes(routes!(reveal_secret))
        .routes(routes!(rotate_secret))
        .routes(routes!(send_test))
        .routes(routes!(list_deliveries))
        .routes(routes!(redeliver))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AlertChannel {
    pub id: ChannelId,
    pub name: String,
    pub kind: ChannelKind,
    /// Scheme and host of the receiver; the full URL is kept sealed.
    pub target: String,
    /// False once deliveries stopped: the receiver answered 410 Gone, or failed for 5 days.
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// Since when every delivery has failed (absent after a success).
    pub failing_since: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<Channel> for AlertChannel {
    fn from(c: Channel) -> Self {
        AlertChannel {
            id: c.id,
            name: c.name,
            kind: c.kind,
            target: c.url_display,
            enabled: c.enabled,
            disabled_reason: c.disabled_reason,
            failing_since: c.failing_since.map(to_rfc3339),
            created_at: to_rfc3339(c.created_at),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAlertChannel {
    #[schema(schema_with = schema::display_name)]
    pub name: String,
    pub kind: ChannelKind,
    /// The receiver: https, or http for hosts in `alert_webhook_allow`. Loopback, private,
    /// link-local and metadata addresses are refused (here, and again after DNS at every
    /// send). Required, except for `pagerduty` (default: the Events API v2 URL). Kept sealed.
    #[schema(pattern = r"^https?://[^\s/?#]+(/\S*)?$", max_length = 2048)]
    pub url: Option<String>,
    /// PagerDuty's integration (routing) key: required for `pagerduty`, refused otherwise.
    /// Kept sealed.
    pub routing_key: Option<String>,
}

/// What to change of a channel; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAlertChannel {
    #[schema(schema_with = schema::display_name)]
    pub name: Option<String>,
    /// A new receiver, checked as on creation.
    #[schema(pattern = r"^https?://[^\s/?#]+(/\S*)?$", max_length = 2048)]
    pub url: Option<String>,
    /// A new PagerDuty routing key (pagerduty channels only).
    pub routing_key: Option<String>,
    /// `true` turns deliveries back on after the channel was disabled (by a 410, by 5 days of
    /// failures, or by an admin), and the notifications held meanwhile are sent; `false` stops
    /// deliveries, holding new notifications until it is enabled again.
    pub enabled: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedAlertChannel {
    /// The signing secret (`whsec_...`). Shown in this response; an admin can reveal it later.
    pub secret: String,
    #[serde(flatten)]
    pub channel: AlertChannel,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AlertChannelSecret {
    /// The secret that signs from now on.
    pub secret: String,
    /// The previous secret, which also signs (a second signature) until `previous_secret_until`.
    pub previous_secret: Option<String>,
    pub previous_secret_until: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueuedNotification {
    /// The message id, sent as `webhook-id` (and the event's `id`) on every attempt.
    pub message_id: String,
}

/// A receiver URL as given, if it is one the service may send to (`ssrf::check_url`).
fn receiver(state: &AppState, url: &str) -> Result<reqwest::Url, FieldError> {
    let url = url.parse::<reqwest::Url>().map_err(|_| FieldError::new("url", "is not a URL"))?;
    ssrf::check_url(&url, &state.config.alert_webhook_allow).map_err(|e| FieldError::new("url", e.to_string()))?;
    Ok(url)
}

/// A routing key belongs to pagerduty channels, which must have one (`required`: on creation).
fn check_routing_key(kind: ChannelKind, key: Option<&str>, required: bool) -> Result<(), FieldError> {
    match (kind, key) {
        (ChannelKind::Pagerduty, Some("")) => Err(FieldError::new("routing_key", "is required for pagerduty")),
        (ChannelKind::Pagerduty, None) if required => Err(FieldError::new("routing_key", "is required for pagerduty")),
        (ChannelKind::Pagerduty, _) | (_, None) => Ok(()),
        (_, Some(_)) => Err(FieldError::new("routing_key", "is only for pagerduty")),
    }
}

/// Where the channel points, safe to show: its scheme and host.
fn display_target(url: &reqwest::Url) -> String {
    format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default())
}

async fn find(conn: &mut store::Conn, org: OrgId, id: ChannelId) -> Result<Channel, ApiError> {
    alert_channels::get(conn, org, id).await?.ok_or(ApiError::NotFound("alert channel"))
}

/// The organization's alert channels.
#[utoipa::path(get, path = "/api/v1/alert-channels", tag = "alert-channels",
    responses((status = 200, body = Vec<AlertChannel>), Unauthenticated, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn list_channels(State(state): State<AppState>, auth: Principal) -> Result<Json<Vec<AlertChannel>>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    Ok(Json(alert_channels::list(&mut conn, auth.org_id).await?.into_iter().map(Into::into).collect()))
}

/// Creates an alert channel (admins); its signing secret is in the response.
///
/// Enabled channels receive the alerts the notification policies route to them (all alerts no
/// policy takes go to every enabled channel). A webhook receives the versioned event as
/// JSON; Slack, PagerDuty (Events API v2) and Alertmanager receivers get it in their own
/// format. Every request is signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`,
/// `webhook-signature`), and the `webhook-id` is the same on every attempt.
#[utoipa::path(post, path = "/api/v1/alert-channels", tag = "alert-channels", request_body = CreateAlertChannel,
    responses((status = 201, body = CreatedAlertChannel), JsonBody, Unauthenticated, Forbidden, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id))]
async fn create_channel(
    State(state): State<AppState>,
    auth: Principal,
    ApiJson(req): ApiJson<CreateAlertChannel>,
) -> Result<(StatusCode, Json<CreatedAlertChannel>), ApiError> {
    auth.require(Role::Admin)?;
    let mut errors = Vec::new();
    let name = parse_display_name(&req.name).map_err(|e| errors.push(FieldError::new("name", e))).ok();
    let url = match (req.url.as_deref(), req.kind) {
        (None, ChannelKind::Pagerduty) => Some(PAGERDUTY_EVENTS_URL),
        (None, _) => {
            errors.push(FieldError::new("url", "is required"));
            None
        }
        (Some(url), _) => Some(url.trim()),
    };
    let url = url.and_then(|u| receiver(&state, u).map_err(|e| errors.push(e)).ok());
    let routing_key = req.routing_key.as_deref().map(str::trim);
    if let Err(e) = check_routing_key(req.kind, routing_key, true) {
        errors.push(e);
    }
    let (Some(name), Some(url), true) = (name, url, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let secret = signing::new_secret();
    let now = state.clock.now_ms();
    let channel = Channel {
        id: ChannelId::new(),
        org_id: auth.org_id,
        name,
        kind: req.kind,
        url_sealed: state.sealer.seal(url.as_str().as_bytes()),
        url_display: display_target(&url),
        secret_sealed: state.sealer.seal(secret.as_bytes()),
        routing_key_sealed: routing_key.map(|k| state.sealer.seal(k.as_bytes())),
        previous_secret_sealed: None,
        previous_secret_until: None,
        enabled: true,
        disabled_reason: None,
        failing_since: None,
        created_at: now,
    };
    let mut tx = state.db.begin().await?;
    alert_channels::insert(&mut tx, &channel).await?;
    let details = serde_json::json!({ "name": channel.name, "kind": channel.kind, "target": channel.url_display });
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "alert_channel.create", ("alert_channel", channel.id.to_string()), details).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(CreatedAlertChannel { secret, channel: channel.into() })))
}

/// One alert channel.
#[utoipa::path(get, path = "/api/v1/alert-channels/{id}", tag = "alert-channels",
    params(("id" = ChannelId, Path, description = "Channel id")),
    responses((status = 200, body = AlertChannel), BadRequest, Unauthenticated, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, channel_id = %id))]
async fn get_channel(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<ChannelId>) -> Result<Json<AlertChannel>, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    Ok(Json(find(&mut conn, auth.org_id, id).await?.into()))
}

/// Renames an alert channel, points it at another receiver, or turns it on or off (admins).
#[utoipa::path(patch, path = "/api/v1/alert-channels/{id}", tag = "alert-channels", request_body = UpdateAlertChannel,
    params(("id" = ChannelId, Path, description = "Channel id")),
    responses((status = 200, body = AlertChannel), JsonBody, Unauthenticated, Forbidden, NotFound, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, channel_id = %id))]
async fn update_channel(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath(id): ApiPath<ChannelId>,
    ApiJson(req): ApiJson<UpdateAlertChannel>,
) -> Result<Json<AlertChannel>, ApiError> {
    auth.require(Role::Admin)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    let mut channel = find(&mut tx, auth.org_id, id).await?;
    let mut errors = Vec::new();
    let mut changed = serde_json::Map::new();
    if let Some(name) = &req.name {
        match parse_display_name(name) {
            Ok(name) => channel.name = name,
            Err(e) => errors.push(FieldError::new("name", e)),
        }
        changed.insert("name".into(), channel.name.clone().into());
    }
    if let Some(url) = &req.url {
        match receiver(&state, url.trim()) {
            Ok(url) => {
                channel.url_sealed = state.sealer.seal(url.as_str().as_bytes());
                channel.url_display = display_target(&url);
            }
            Err(e) => errors.push(e),
        }
        changed.insert("target".into(), channel.url_display.clone().into());
    }
    let routing_key = req.routing_key.as_deref().map(str::trim);
    match check_routing_key(channel.kind, routing_key, false) {
        Ok(()) => {
            if let Some(key) = routing_key {
                channel.routing_key_sealed = Some(state.sealer.seal(key.as_bytes()));
                changed.insert("routing_key".into(), "changed".into());
            }
        }
        Err(e) => errors.push(e),
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    match req.enabled {
        Some(true) if !channel.enabled => {
            channel.enabled = true;
            channel.disabled_reason = None;
            // A fresh start: the 5-day clock of failures begins again.
            channel.failing_since = None;
        }
        Some(false) if channel.enabled => {
            channel.enabled = false;
            channel.disabled_reason = Some("disabled by an admin".into());
        }
        _ => {}
    }
    if let Some(enabled) = req.enabled {
        changed.insert("enabled".into(), enabled.into());
    }
    alert_channels::update(&mut tx, &channel).await?;
    let target = ("alert_channel", id.to_string());
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "alert_channel.update", target, serde_json::Value::Object(changed)).await?;
    tx.commit().await?;
    Ok(Json(channel.into()))
}

/// Deletes an alert channel and its undelivered notifications and log (admins).
#[utoipa::path(delete, path = "/api/v1/alert-channels/{id}", tag = "alert-channels",
    params(("id" = ChannelId, Path, description = "Channel id")),
    responses((status = 204), BadRequest, Unauthenticated, Forbidden, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, channel_id = %id))]
async fn delete_channel(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<ChannelId>) -> Result<StatusCode, ApiError> {
    auth.require(Role::Admin)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    let channel = find(&mut tx, auth.org_id, id).await?;
    alert_channels::delete(&mut tx, auth.org_id, id).await?;
    store::policies::drop_channel(&mut tx, auth.org_id, id).await?;
    audit::record(
        &mut tx,
        auth.org_id,
        now,
        &auth.actor,
        "alert_channel.delete",
        ("alert_channel", id.to_string()),
        serde_json::json!({ "name": channel.name }),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Shows the channel's signing secrets (admins); the reveal is audited.
#[utoipa::path(post, path = "/api/v1/alert-channels/{id}/reveal-secret", tag = "alert-channels",
    params(("id" = ChannelId, Path, description = "Channel id")),
    responses((status = 200, body = AlertChannelSecret), BadRequest, Unauthenticated, Forbidden, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, channel_id = %id))]
async fn reveal_secret(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<ChannelId>) -> Result<Json<AlertChannelSecret>, ApiError> {
    secret_change(&state, &auth, id, "alert_channel.reveal_secret", false).await
}

/// Replaces the channel's signing secret (admins). The old one keeps signing, as a second
/// signature, for `alert_secret_overlap_secs`, so receivers can switch without a gap.
#[utoipa::path(post, path = "/api/v1/alert-channels/{id}/rotate-secret", tag = "alert-channels",
    params(("id" = ChannelId, Path, description = "Channel id")),
    responses((status = 200, body = AlertChannelSecret), BadRequest, Unauthenticated, Forbidden, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, channel_id = %id))]
async fn rotate_secret(State(state): State<AppState>, auth: Principal, ApiPath(id): ApiPath<ChannelId>) -> Result<Json<AlertChannelSecret>, ApiError> {
    secret_change(&state, &auth, id, "alert_channel.rotate_secret", true).await
}

/// Reveals (and first, when `rotate`, replaces) the channel's secrets, audited as `action`.
async fn secret_change(state: &AppState, auth: &Principal, id: ChannelId, action: &str, rotate: bool) -> Result<Json<AlertChannelSecret>, ApiError> {
    auth.require(Role::Admin)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    find(&mut tx, auth.org_id, id).await?;
    if rotate {
        let until = now + crate::config::ms(state.config.alert_secret_overlap);
        alert_channels::rotate_secret(&mut tx, auth.org_id, id, &state.sealer.seal(signing::new_secret().as_bytes()), until).await?;
    }
    let channel = find(&mut tx, auth.org_id, id).await?;
    audit::record(&mut tx, auth.org_id, now, &auth.actor, action, ("alert_channel", id.to_string()), serde_json::json!({ "name": channel.name })).await?;
    tx.commit().await?;
    let open = |sealed: &str| -> Result<String, ApiError> {
        Ok(String::from_utf8(state.sealer.open(sealed).map_err(anyhow::Error::from)?).map_err(anyhow::Error::from)?)
    };
    let overlap = channel.previous_secret_until.filter(|until| *until > now);
    let previous_secret = match (&channel.previous_secret_sealed, overlap) {
        (Some(sealed), Some(_)) => Some(open(sealed)?),
        _ => None,
    };
    Ok(Json(AlertChannelSecret { secret: open(&channel.secret_sealed)?, previous_secret, previous_secret_until: overlap.map(to_rfc3339) }))
}

/// Queues an `alert.test` event for the channel (admins).
#[utoipa::path(post, path = "/api/v1/alert-channels/{id}/test", tag = "alert-channels",
    params(("id" = ChannelId, Path, description = "Channel id")),
    responses((status = 202, body = QueuedNotification), BadRequest, Unauthenticated, Forbidden, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, channel_id = %id))]
async fn send_test(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath(id): ApiPath<ChannelId>,
) -> Result<(StatusCode, Json<QueuedNotification>), ApiError> {
    auth.require(Role::Admin)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    let channel = find(&mut tx, auth.org_id, id).await?;
    let message_id = notifications::enqueue_for(&mut tx, &channel, &test_event(auth.org_id, to_rfc3339(now)), now).await?;
    audit::record(
        &mut tx,
        auth.org_id,
        now,
        &auth.actor,
        "alert_channel.test",
        ("alert_channel", id.to_string()),
        serde_json::json!({ "message_id": message_id }),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(QueuedNotification { message_id })))
}

/// One attempt to deliver a notification.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryAttempt {
    pub id: uuid::Uuid,
    pub message_id: String,
    pub at: chrono::DateTime<chrono::Utc>,
    /// The receiver's HTTP status; absent when no answer came (refused, unreachable, timeout).
    pub status_code: Option<u16>,
    /// Why no answer came.
    pub error: Option<String>,
    pub latency_ms: i64,
    /// The start of the receiver's answer (at most 1 KiB).
    pub response_excerpt: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryAttempt>,
    pub next_cursor: Option<String>,
}

/// The channel's delivery log, newest first.
#[utoipa::path(get, path = "/api/v1/alert-channels/{id}/deliveries", tag = "alert-channels",
    params(("id" = ChannelId, Path, description = "Channel id"), super::PageQuery),
    responses((status = 200, body = DeliveryPage), BadRequest, Unauthenticated, NotFound, Invalid, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, channel_id = %id))]
async fn list_deliveries(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath(id): ApiPath<ChannelId>,
    ApiQuery(q): ApiQuery<super::PageQuery>,
) -> Result<Json<DeliveryPage>, ApiError> {
    let limit = super::page_limit(q.limit, 100)?;
    let before = q.uuid_cursor()?;
    let mut conn = state.db.pool.acquire().await?;
    find(&mut conn, auth.org_id, id).await?;
    let rows = notifications::attempts(&mut conn, auth.org_id, id, before, limit + 1).await?;
    let (rows, next_cursor) = super::into_page(rows, limit, |r| r.id.to_string());
    let items = rows
        .into_iter()
        .map(|a| DeliveryAttempt {
            id: a.id,
            message_id: a.message_id,
            at: to_rfc3339(a.at),
            status_code: a.status_code,
            error: a.error,
            latency_ms: a.latency_ms,
            response_excerpt: a.response_excerpt,
        })
        .collect();
    Ok(Json(DeliveryPage { items, next_cursor }))
}

/// Sends a notification again (admins): same message id, same body, retry schedule restarted.
#[utoipa::path(post, path = "/api/v1/alert-channels/{id}/deliveries/{message_id}/redeliver", tag = "alert-channels",
    params(("id" = ChannelId, Path, description = "Channel id"), ("message_id" = String, Path, description = "Message id (msg_...)")),
    responses((status = 202, body = QueuedNotification), BadRequest, Unauthenticated, Forbidden, NotFound, Internal), security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(org_id = %auth.org_id, channel_id = %id))]
async fn redeliver(
    State(state): State<AppState>,
    auth: Principal,
    ApiPath((id, message_id)): ApiPath<(ChannelId, String)>,
) -> Result<(StatusCode, Json<QueuedNotification>), ApiError> {
    auth.require(Role::Admin)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    if !notifications::redeliver(&mut tx, auth.org_id, id, &message_id, now).await? {
        return Err(ApiError::NotFound("notification"));
    }
    let details = serde_json::json!({ "message_id": message_id });
    audit::record(&mut tx, auth.org_id, now, &auth.actor, "alert_channel.redeliver", ("alert_channel", id.to_string()), details).await?;
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(QueuedNotification { message_id })))
}
