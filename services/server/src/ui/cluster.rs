//! A cluster's page: control plane, proxies by version, workloads with golden metrics and
//! charts over the last hour, certificates, events, commands, and how to connect it.

use std::collections::BTreeMap;

use axum::extract::State;
use maud::{html, Markup};

use super::charts::{line_chart, sparkline, Axis, Series};
use super::{ago, countdown, layout, page_error, OnPage, PageResult, Viewer};
use crate::app::AppState;
use crate::db::to_rfc3339;
use crate::domain::health::{is_finished, rate_per_second};
use crate::domain::ClusterId;
use crate::http::error::ApiError;
use crate::http::extract::ApiPath;
use crate::store;
use crate::store::fleet::Golden;

const HOUR_MS: i64 = 3_600_000;
/// The workloads table's figures cover the last five minutes (or less, for young workloads).
const RECENT_MS: i64 = 5 * 60_000;

pub async fn page(State(state): State<AppState>, viewer: Viewer, OnPage(ApiPath(id)): OnPage<ApiPath<String>>) -> PageResult {
    let id: ClusterId = id.parse().map_err(|_| page_error(ApiError::NotFound("cluster")))?;
    let mut conn = state.db.pool.acquire().await.map_err(page_error)?;
    let cluster =
        store::clusters::get(&mut conn, viewer.principal.org_id, id).await.map_err(page_error)?.ok_or_else(|| page_error(ApiError::NotFound("cluster")))?;
    drop(conn);
    let live = fragment(&state, &viewer, id).await.map_err(page_error)?;
    let install = format!(
        "curl -sf -H \"Authorization: Bearer $MESHFLEET_TOKEN\" {}/api/v1/clusters/{}/install.yaml | kubectl apply -f -",
        state.config.public_url(),
        cluster.id
    );
    Ok(layout(
        &cluster.name,
        Some(&viewer),
        html! {
            p { a href="/fleet" { "← Fleet" } }
            h1 { (cluster.name) }
            p.labels { @for (k, v) in &cluster.labels { span.label { (k) "=" (v) } " " } }
            div id="live" data-live=(super::fleet::live_url(&format!("view=cluster&id={id}"), &live)) aria-live="polite" { (live) }
            section.card {
                h2 { "Connect this cluster" }
                p { "Run this where kubectl points at the cluster. The manifest carries a fresh single-use bootstrap token (valid one hour); "
                    code { "MESHFLEET_TOKEN" } " is an API token or access token of an admin." }
                div.copy {
                    pre { code id="install-command" { (install) } }
                    button type="button" data-copy="install-command" { "Copy" }
                }
                @if viewer.can_change() {
                    p { "Or download the manifest here and apply it with " code { "kubectl apply -f install.yaml" } "." }
                    div.actions {
                        button type="button" data-download=(format!("/api/v1/clusters/{id}/install.yaml")) data-filename="install.yaml" data-mutates { "Download install.yaml" }
                        p.form-error role="alert" aria-live="polite" {}
                    }
                }
            }
            @if viewer.can_change() {
                section.card {
                    h2 { "Commands" }
                    div.actions {
                        @for kind in crate::http::commands::READ_ONLY_KINDS {
                            form data-api=(format!("/api/v1/clusters/{id}/commands")) data-method="POST" data-then="reload" data-mutates {
                                input type="hidden" name="kind" value=(kind);
                                button type="submit" { "Run " (kind) }
                            }
                        }
                    }
                    p.form-error role="alert" aria-live="polite" {}
                }
            }
        },
    ))
}

/// The live part of the page.
pub async fn fragment(state: &AppState, viewer: &Viewer, id: ClusterId) -> Result<Markup, ApiError> {
    let org = viewer.principal.org_id;
    let now = state.clock.now_ms();
    let mut conn = state.db.pool.acquire().await?;
    let cluster = store::clusters::get(&mut conn, org, id).await?.ok_or(ApiError::NotFound("cluster"))?;
    let status = cluster.effective_status(&state.liveness()).to_owned();
    let facts = store::inventory::facts(&mut conn, org, id).await?.map(|(f, _)| f).unwrap_or_default();
    let pods = store::inventory::pods(&mut conn, org, id).await?;
    let minutes = store::fleet::golden_by_minute(&mut conn, org, id, now - HOUR_MS).await?;
    let rollups = store::rollups::minutes_since(&mut conn, org, id, now - HOUR_MS).await?;
    let events = store::rollups::recent_events(&mut conn, org, id, 20).await?;
    let commands = store::commands::list(&mut conn, org, id, None, 10).await?;
    let throttled = store::throttles::current(&mut conn, org, id, now).await?;
    drop(conn);
    let firing = super::alerts::firing_card(state, viewer, Some(id)).await?;

    // The charts end at the last finished minute; the table's figures include the running one.
    let minutes: Vec<&(i64, Golden)> = minutes.iter().filter(|(m, _)| is_finished(*m, now)).collect();
    let rps: Vec<(i64, f64)> = minutes.iter().map(|(m, g)| (*m, g.requests as f64 / 60.0)).collect();
    let success: Vec<(i64, f64)> = minutes.iter().filter_map(|(m, g)| g.success_rate().map(|r| (*m, r * 100.0))).collect();
    let p99: Vec<(i64, f64)> = minutes.iter().filter(|(_, g)| g.requests > 0).map(|(m, g)| (*m, g.p99_ms)).collect();
    let mut by_version: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &pods {
        *by_version.entry(p.proxy_version.as_str()).or_default() += 1;
    }
    let outdated: usize =
        by_version.iter().filter(|(v, _)| !facts.control_plane.version.is_empty() && **v != facts.control_plane.version).map(|(_, n)| n).sum();
    let mut workloads: BTreeMap<(&str, &str), Vec<&store::rollups::MinuteRollup>> = BTreeMap::new();
    for r in &rollups {
        workloads.entry((r.namespace.as_str(), r.workload.as_str())).or_default().push(r);
    }
    Ok(html! {
        section.card.facts {
            dl {
                dt { "Status" } dd { span class=(format!("badge status-{status}")) data-status=(status) { (status) } }
                dt { "Agent" } dd { (cluster.agent_version.as_deref().unwrap_or("–")) }
                dt { "Kubernetes" } dd { (cluster.kubernetes_version.as_deref().unwrap_or("–")) " · " (facts.node_count) " nodes" }
                dt { "Mesh control plane" } dd { (if facts.control_plane.version.is_empty() { "–" } else { &facts.control_plane.version }) " · " (facts.control_plane.ready_replicas) "/" (facts.control_plane.replicas) " ready" }
                dt { "Last heard from" } dd { @match cluster.last_seen_at { Some(t) => { (ago(t, now)) }, None => { "never" } } }
            }
        }
        (firing)
        @if !throttled.is_empty() {
            section.card.alert role="alert" {
                h2 { "The service is refusing some of this cluster's data" }
                ul { @for t in &throttled {
                    li data-throttled=(t.reason) { (refusal_words(&t.reason)) ": " (t.refused) " refused since " (t.since.format("%Y-%m-%d %H:%M UTC")) }
                } }
                p.muted { "Refused data is not stored. The limits are the service's rate limits and quotas per cluster." }
            }
        }
        section.charts aria-label="Golden metrics over the last hour" {
            (line_chart("Requests per second", &Series { points: &rps, unit: "req/s", axis: Axis::FromZero }))
            (line_chart("Success rate", &Series { points: &success, unit: "%", axis: Axis::Fit { ceiling: 100.0 } }))
            (line_chart("p99 latency", &Series { points: &p99, unit: "ms", axis: Axis::FromZero }))
        }
        section.card {
            h2 { "Workloads" }
            @if workloads.is_empty() { p.muted { "No golden metrics reported yet." } } @else {
                div.table-wrap { table {
                    thead { tr { th scope="col" { "Workload" } th scope="col" { "Requests/s" } th scope="col" { "Success rate" } th scope="col" { "p99" } th scope="col" { "Last hour" } } }
                    tbody { @for ((ns, w), rs) in &workloads {
                        @let recent: Vec<_> = rs.iter().filter(|r| r.minute >= now - RECENT_MS).collect();
                        @let last = recent.iter().fold((0i64, 0i64, 0f64), |a, r| (a.0 + r.requests, a.1 + r.failures, a.2.max(r.latency_p99_ms)));
                        @let first_minute = recent.first().map_or(now, |r| r.minute);
                        tr {
                            th scope="row" { (ns) "/" (w) }
                            td { (format!("{:.1}", rate_per_second(last.0, first_minute, now, RECENT_MS))) }
                            td { @if last.0 > 0 { (format!("{:.2}%", 100.0 - last.1 as f64 * 100.0 / last.0 as f64)) } @else { "–" } }
                            td { @if last.0 > 0 { (format!("{:.0} ms", last.2)) } @else { "–" } }
                            td { (sparkline(&rs.iter().filter(|r| is_finished(r.minute, now)).map(|r| (r.minute, r.requests as f64 / 60.0)).collect::<Vec<_>>(), &format!("requests per second of {w}"))) }
                        }
                    } }
                } }
            }
        }
        section.card {
            h2 { "Control plane" }
            @if facts.control_plane.components.is_empty() { p.muted { "No components reported." } }
            ul { @for c in &facts.control_plane.components { li { (c.name) " " (c.version) " — " (if c.ready { "ready" } else { "not ready" }) } } }
            h2 { "Data plane proxies" }
            p { (pods.len()) " proxies" @if outdated > 0 { ", " strong.warn { (outdated) " outdated" } } }
            ul { @for (v, n) in &by_version { li { (v) ": " (n) } } }
        }
        section.card {
            h2 { "Certificates" }
            @if facts.certificates.is_empty() { p.muted { "None reported." } }
            ul { @for c in &facts.certificates { li { strong { (c.role) } " " (c.subject) " — expires " time data-expires=(c.not_after) { (countdown(c.not_after, now)) } } } }
        }
        section.card {
            h2 { "Events" }
            @if events.is_empty() { p.muted { "No events." } }
            ol.timeline { @for e in &events { li { time { (to_rfc3339(e.at).format("%Y-%m-%d %H:%M:%S")) } " " span class=(format!("badge event-{}", e.kind.to_lowercase())) { (e.kind) } " " (e.object) ": " (e.reason) " — " (e.message) } } }
        }
        section.card {
            h2 { "Recent commands" }
            @if commands.is_empty() { p.muted { "No commands yet." } }
            ul { @for c in &commands { li data-command=(c.id) { (c.kind) " — " span class=(format!("badge command-{}", c.state)) { (c.state) } " " (c.message) } } }
        }
    })
}

/// What a refusal reason (`store::throttles::Throttle::reason`) means, for people.
fn refusal_words(reason: &str) -> &'static str {
    match reason {
        "rate_limited" => "The agent sends more messages than its rate limit",
        "reconnects" => "The agent reconnects more often than allowed",
        "series" => "The cluster reports more workloads than its quota of series",
        "events_per_minute" => "The cluster reports more events per minute than its quota",
        "bytes" => "Reports larger than the limit for their kind",
        _ => "Refused",
    }
}
