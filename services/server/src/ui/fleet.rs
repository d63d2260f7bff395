//! The fleet overview: every cluster with status, health, versions, nearest certificate
//! expiry and golden metrics, worst first; filters, search, a summary row, the firing alerts;
//! kept live by server-sent events carrying the re-rendered table (as are the other live views).

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{Stream, StreamExt};
use maud::{html, Markup};
use serde::Deserialize;

use super::charts::sparkline;
use super::{countdown, layout, page_error, OnPage, PageResult, Viewer};
use crate::app::AppState;
use crate::domain::health::{self, Health};
use crate::domain::labels::Selector;
use crate::domain::{ClusterId, RolloutId};
use crate::fleet::{rates, FleetCache, Row, Snapshot, RECENT_MS};
use crate::http::error::ApiError;
use crate::http::extract::ApiQuery;

/// Rows the overview shows at most.
const MAX_ROWS: usize = crate::fleet::TRENDED_ROWS;

#[derive(Debug, Default, Clone, Deserialize)]
pub struct Filters {
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub selector: String,
}

/// The words for a row's health: its deciding finding, or that all is well.
fn reason(r: &Row, now: i64) -> String {
    r.findings.iter().find(|(f, _)| f.health().is_some()).map_or_else(|| "all good".to_owned(), |(f, _)| f.message(now))
}

/// Keeps the rows that match the filters.
fn matching<'a>(rows: &'a [Row], f: &Filters) -> Result<Vec<&'a Row>, ApiError> {
    let selector: Selector = f.selector.parse().map_err(|e: crate::domain::labels::LabelError| ApiError::field("selector", e.message))?;
    if !matches!(f.status.as_str(), "" | "pending" | "connected" | "stale" | "disconnected") {
        return Err(ApiError::field("status", "pick pending, connected, stale or disconnected"));
    }
    let needle = f.q.trim().to_lowercase();
    Ok(rows
        .iter()
        .filter(|r| f.status.is_empty() || r.status == f.status)
        .filter(|r| needle.is_empty() || r.cluster.name.contains(&needle))
        .filter(|r| selector.matches(&r.cluster.labels))
        .collect())
}

fn percent(r: Option<f64>) -> String {
    r.map(|r| format!("{:.2}%", r * 100.0)).unwrap_or_else(|| "–".into())
}

/// The live part of the overview: the summary and the table.
pub async fn fragment(state: &AppState, viewer: &Viewer, f: &Filters) -> Result<Markup, ApiError> {
    let snapshot = FleetCache::snapshot(state, viewer.principal.org_id).await?;
    let rows = matching(&snapshot.rows, f)?;
    let now = state.clock.now_ms();
    let count = |h: &[Health]| rows.iter().filter(|r| h.contains(&r.health)).count();
    let warn_ms = crate::config::ms(state.config.health.expiry_warning);
    let expiring = rows.iter().filter(|r| r.nearest_expiry.is_some_and(|e| e - now < warn_ms)).count();
    let shown: Vec<&Row> = rows.iter().copied().take(MAX_ROWS).collect();
    let trends = trends(state, viewer, &snapshot, &shown, now).await?;
    let firing = super::alerts::firing_card(state, viewer, None).await?;
    Ok(html! {
        ul.summary aria-label="Fleet summary" {
            li.healthy { strong { (count(&[Health::Healthy])) } " healthy" }
            li.degraded { strong { (count(&[Health::Degraded, Health::Expiring])) } " degraded" }
            li.critical { strong { (rows.iter().filter(|r| r.status == "disconnected" || r.status == "stale").count()) } " disconnected or stale" }
            li.expiring { strong { (expiring) } " certificates expiring within " (health::span(warn_ms)) }
            li { strong { (count(&[Health::Pending])) } " waiting for an agent" }
        }
        (firing)
        div.table-wrap {
            table.fleet {
                caption { "Clusters, worst first" @if rows.len() > MAX_ROWS { " (showing " (MAX_ROWS) " of " (rows.len()) "; narrow the filters)" } }
                thead { tr {
                    th scope="col" { "Cluster" } th scope="col" { "Status" } th scope="col" { "Health" }
                    th scope="col" { "Mesh" } th scope="col" { "Agent" } th scope="col" { "Nearest certificate expiry" }
                    th scope="col" { "Success rate" } th scope="col" { "Requests/s" } th scope="col" { "p99 latency" } th scope="col" { "Trend (30 min)" }
                } }
                tbody {
                    @for r in &shown {
                        tr data-cluster=(r.cluster.name) {
                            th scope="row" { a href=(format!("/clusters/{}", r.cluster.id)) { (r.cluster.name) } }
                            td { span class=(format!("badge status-{}", r.status)) data-status=(r.status) { (r.status) } }
                            td { @let reason = reason(r, now); span class=(format!("badge health-{}", r.health.label())) title=(reason) { (r.health.label()) } span.reason { (reason) } }
                            td { (or_dash(&r.mesh_version)) @if r.outdated > 0 { " " span.warn { (r.outdated) " of " (r.proxies) " proxies outdated" } } }
                            td { (or_dash(r.cluster.agent_version.as_deref().unwrap_or(""))) }
                            td { @match r.nearest_expiry { Some(e) => { time data-expires=(e) { (countdown(e, now)) } }, None => { "–" } } }
                            td { (percent(r.golden.success_rate())) }
                            td { @if r.golden.requests > 0 { (format!("{:.1}", health::rate_per_second(r.golden.requests, r.golden.first_minute, now, RECENT_MS))) } @else { "0.0" } }
                            td { @if r.golden.requests > 0 { (format!("{:.0} ms", r.golden.p99_ms)) } @else { "–" } }
                            td { (sparkline(trends.get(&r.cluster.id).map(Vec::as_slice).unwrap_or_default(), &format!("requests per second of {}", r.cluster.name))) }
                        }
                    }
                }
            }
        }
    })
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "–"
    } else {
        s
    }
}

/// Trends of the rows shown: from the snapshot, and read for rows a filter brought in.
async fn trends(state: &AppState, viewer: &Viewer, snapshot: &Snapshot, rows: &[&Row], now: i64) -> Result<HashMap<ClusterId, Vec<(i64, f64)>>, ApiError> {
    let missing: Vec<ClusterId> = rows.iter().filter(|r| r.golden.requests > 0 && !snapshot.trends.contains_key(&r.cluster.id)).map(|r| r.cluster.id).collect();
    let mut out: HashMap<ClusterId, Vec<(i64, f64)>> =
        rows.iter().filter_map(|r| snapshot.trends.get(&r.cluster.id).map(|t| (r.cluster.id, t.clone()))).collect();
    if !missing.is_empty() {
        let mut conn = state.db.pool.acquire().await?;
        out.extend(rates(&mut conn, viewer.principal.org_id, &missing, now).await?);
    }
    Ok(out)
}

pub async fn page(State(state): State<AppState>, viewer: Viewer, OnPage(ApiQuery(f)): OnPage<ApiQuery<Filters>>) -> PageResult {
    let fragment = fragment(&state, &viewer, &f).await.map_err(page_error)?;
    let empty = f.q.is_empty() && f.status.is_empty() && f.selector.is_empty() && !fragment.0.contains("data-cluster=");
    let live = live_url(&format!("view=fleet&q={}&status={}&selector={}", enc(&f.q), enc(&f.status), enc(&f.selector)), &fragment);
    Ok(layout(
        "Fleet",
        Some(&viewer),
        html! {
            h1 { "Fleet" }
            @if empty {
                (first_run(&state, &viewer))
            }
            @if !empty {
                form.filters method="get" action="/fleet" role="search" {
                    label { "Search " input type="search" name="q" value=(f.q) placeholder="cluster name"; }
                    label { "Status " select name="status" {
                        @for s in ["", "connected", "stale", "disconnected", "pending"] {
                            option value=(s) selected[s == f.status] { (if s.is_empty() { "any" } else { s }) }
                        }
                    } }
                    label { "Labels " input type="text" name="selector" value=(f.selector) placeholder="env=prod,tier in (web)"; }
                    button type="submit" { "Filter" }
                }
                div id="live" data-live=(live) aria-live="polite" { (fragment) }
            }
            @if viewer.can_change() { (new_cluster_form()) }
        },
    ))
}

fn enc(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

fn new_cluster_form() -> Markup {
    html! {
        section.card {
            h2 { "Connect a cluster" }
            form data-api="/api/v1/clusters" data-method="POST" data-then="cluster" data-mutates {
                label for="cluster-name" { "Name (lowercase letters, digits and dashes)" }
                input id="cluster-name" name="name" required pattern=(r"[a-z0-9]([a-z0-9\-]*[a-z0-9])?") maxlength="63";
                label for="cluster-labels" { "Labels (optional, e.g. env=prod,region=eu)" }
                input id="cluster-labels" name="labels" data-kind="labels";
                p.form-error role="alert" aria-live="polite" {}
                button type="submit" { "Create cluster" }
            }
        }
    }
}

fn first_run(state: &AppState, viewer: &Viewer) -> Markup {
    let api = state.config.public_url();
    html! {
        section.card.first-run {
            h2 { "Your fleet is empty" }
            p { "Connect a cluster: create it below, then apply the manifest it shows you with kubectl. The agent dials out to Meshfleet and the cluster appears here as connected." }
            p { "No cluster at hand? Start a demo fleet of simulated agents next to the server, and watch this page come alive:" }
            pre { code { "cargo run --release -p meshfleet-sim -- \\\n  --api " (api) " --email " (viewer.email) " --password '…' --clusters 50" } }
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct LiveQuery {
    view: String,
    id: Option<ClusterId>,
    rollout: Option<RolloutId>,
    /// The digest of the fragment the page was rendered with (a string: numbers do not survive
    /// `flatten` in a query string).
    #[serde(default)]
    shown: String,
    #[serde(flatten)]
    filters: Filters,
}

/// A digest of a rendered fragment, to tell whether it changed.
fn digest(html: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    html.hash(&mut h);
    h.finish()
}

/// The live stream of a view (`query`), starting from the fragment the page shows: the stream
/// sends nothing until it changes, so a fresh page is not redrawn (a click on it not lost).
pub fn live_url(query: &str, shown: &Markup) -> String {
    format!("/ui/live?{query}&shown={}", digest(&shown.0))
}

/// Server-sent events: the view's fragment, re-rendered every second and sent when it changed.
pub async fn live(State(state): State<AppState>, viewer: Viewer, OnPage(ApiQuery(q)): OnPage<ApiQuery<LiveQuery>>) -> Response {
    if !matches!(
        (q.view.as_str(), q.id, q.rollout),
        ("fleet" | "alerts" | "channels" | "certificates" | "upgrades", _, _) | ("cluster", Some(_), _) | ("rollout", _, Some(_))
    ) {
        return page_error(ApiError::field("view", "unknown live view"));
    }
    let stopping = state.stopping.clone().cancelled_owned();
    Sse::new(updates(state, viewer, q).take_until(stopping)).keep_alive(KeepAlive::default()).into_response()
}

fn updates(state: AppState, viewer: Viewer, q: LiveQuery) -> impl Stream<Item = Result<Event, Infallible>> {
    let shown = q.shown.parse().unwrap_or(0u64);
    futures::stream::unfold((state, viewer, q, shown), |(state, viewer, q, last)| async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let rendered = match (q.view.as_str(), q.id, q.rollout) {
                ("cluster", Some(id), _) => super::cluster::fragment(&state, &viewer, id).await,
                ("rollout", _, Some(id)) => super::upgrades::rollout_fragment(&state, &viewer, id).await,
                ("upgrades", _, _) => super::upgrades::fragment(&state, &viewer).await,
                ("alerts", _, _) => super::alerts::fragment(&state, &viewer).await,
                ("channels", _, _) => super::channels::fragment(&state, &viewer).await,
                ("certificates", _, _) => super::certificates::fragment(&state, &viewer).await,
                _ => fragment(&state, &viewer, &q.filters).await,
            };
            let html = match rendered {
                Ok(m) => m.into_string(),
                Err(e) => html! { p.form-error role="alert" { (e.problem().detail.unwrap_or_default()) } }.into_string(),
            };
            let digest = digest(&html);
            if digest != last {
                return Some((Ok(Event::default().event("update").data(html)), (state, viewer, q, digest)));
            }
        }
    })
}
