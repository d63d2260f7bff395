//! The alert channels page: each channel of the viewer's organization, whether it delivers and
//! why not, and its delivery log, kept live; admins send a test event and redeliver. Secrets and
//! full receiver URLs never appear here (only the stored scheme and host).

use std::collections::HashSet;

use axum::extract::State;
use maud::{html, Markup};

use super::{layout, page_error, timestamp, PageResult, Viewer};
use crate::app::AppState;
use crate::http::error::ApiError;
use crate::store::{alert_channels, notifications};

/// Attempts shown per channel, newest first.
const LOG_ROWS: u32 = 20;
/// Characters of a receiver's answer shown in the log.
const EXCERPT_CHARS: usize = 200;

pub async fn page(State(state): State<AppState>, viewer: Viewer) -> PageResult {
    let live = fragment(&state, &viewer).await.map_err(page_error)?;
    Ok(layout(
        "Alert channels",
        Some(&viewer),
        html! {
            h1 { "Alert channels" }
            p.muted { "Every enabled channel receives every alert event. Channels are created and changed through the API (README, \u{201c}Alert channels\u{201d})." }
            div id="live" data-live=(super::fleet::live_url("view=channels", &live)) aria-live="polite" { (live) }
        },
    ))
}

/// The live part of the page: the channels and their delivery logs.
pub async fn fragment(state: &AppState, viewer: &Viewer) -> Result<Markup, ApiError> {
    let org = viewer.principal.org_id;
    let admin = viewer.can_change();
    let mut conn = state.db.pool.acquire().await?;
    let channels = alert_channels::list(&mut conn, org).await?;
    let mut logs = Vec::with_capacity(channels.len());
    for c in &channels {
        logs.push(notifications::attempts(&mut conn, org, c.id, None, LOG_ROWS).await?);
    }
    Ok(html! {
        @if channels.is_empty() { section.card { p.muted { "No alert channels yet: alerts are raised and listed, but sent nowhere." } } }
        @for (c, log) in channels.iter().zip(&logs) {
            section.card data-channel=(c.id) {
                h2 { (c.name) " " span.badge.kind { (c.kind.as_str()) } }
                dl {
                    dt { "Receiver" } dd { code { (c.url_display) } }
                    dt { "Deliveries" } dd {
                        @if c.enabled { span.badge.delivery-ok data-enabled="true" { "enabled" } }
                        @else { span.badge.delivery-failed data-enabled="false" { "disabled" } " " (c.disabled_reason.as_deref().unwrap_or("")) }
                    }
                    dt { "Failing since" } dd { @match c.failing_since { Some(t) => { span.warn data-failing-since { (timestamp(t)) } }, None => { "–" } } }
                    dt { "Created" } dd { (timestamp(c.created_at)) }
                }
                @if admin {
                    div.actions {
                        form.inline data-api=(format!("/api/v1/alert-channels/{}/test", c.id)) data-method="POST" data-then="reload" data-mutates {
                            button type="submit" { "Send a test event" }
                            p.form-error role="alert" aria-live="polite" {}
                        }
                    }
                }
                h3 { "Delivery log" }
                @if log.is_empty() { p.muted { "Nothing sent yet." } } @else {
                    (delivery_log(c.id, log, admin))
                }
            }
        }
    })
}

/// The attempts, newest first; admins can redeliver a message from its newest attempt's row.
fn delivery_log(channel: crate::domain::ChannelId, log: &[notifications::Attempt], admin: bool) -> Markup {
    let mut offered = HashSet::new();
    html! {
        div.table-wrap { table.deliveries {
            caption { "The last " (LOG_ROWS) " attempts at most, newest first" }
            thead { tr {
                th scope="col" { "When" } th scope="col" { "Message" } th scope="col" { "Status" } th scope="col" { "Latency" } th scope="col" { "Answer" }
                @if admin { th scope="col" { "Actions" } }
            } }
            tbody { @for a in log {
                @let ok = a.status_code.is_some_and(|s| (200..300).contains(&s));
                tr data-attempt=(a.id) data-message=(a.message_id) {
                    td { (timestamp(a.at)) }
                    td { code { (a.message_id) } }
                    td {
                        span.badge.delivery-ok[ok].delivery-failed[!ok] data-status-code=[a.status_code] {
                            @match a.status_code { Some(s) => { (s) }, None => { "no answer" } }
                        }
                        @if let Some(e) = &a.error { span.reason { (e) } }
                    }
                    td { (a.latency_ms) " ms" }
                    td { span.excerpt { (a.response_excerpt.chars().take(EXCERPT_CHARS).collect::<String>()) } }
                    @if admin { td { @if offered.insert(a.message_id.clone()) {
                        form.inline data-api=(format!("/api/v1/alert-channels/{channel}/deliveries/{}/redeliver", a.message_id)) data-method="POST" data-then="reload" data-mutates {
                            button type="submit" { "Redeliver" }
                            p.form-error role="alert" aria-live="polite" {}
                        }
                    } } }
                }
            } }
        } }
    }
}
