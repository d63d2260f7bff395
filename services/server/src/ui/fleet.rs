//! The fleet overview: every cluster with status, health, versions, nearest certificate
//! expiry and golden metrics, worst first; filters, search, a summary row; kept live by
//! server-sent events carrying the re-rendered table.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::Stream;
use maud::{html, Markup};
use serde::Deserialize;

use super::charts::{is_finished, sparkline};
use super::{countdown, layout, page_error, OnPage, PageResult, Viewer};
use crate::app::AppState;
use crate::domain::health::{self, Finding, Health, Signals};
use crate::domain::labels::Selector;
use crate::domain::{ClusterId, OrgId};
use crate::http::clusters::liveness;
use crate::http::error::ApiError;
use crate::http::extract::ApiQuery;
use crate::store::clusters::{Cluster, ListQuery};
use crate::store::fleet::Golden;
use crate::store::{self};

const DAY_MS: i64 = 86_400_000;
/// Golden metrics in the table cover the last five minutes.
const RECENT_MS: i64 = 5 * 60_000;
const TREND_MS: i64 = 30 * 60_000;
const MAX_ROWS: usize = 100;

pub struct Row {
    pub cluster: Cluster,
    /// Whether the success rate counted as degraded: remembered for the next assessment.
    pub success_degraded: bool,
    pub status: String,
    pub health: Health,
    pub reason: String,
    pub golden: Golden,
    pub mesh_version: String,
    pub nearest_expiry: Option<i64>,
    pub proxies: i64,
    pub outdated: i64,
}

/// The words for a health finding.
fn reason(f: &Finding, now: i64) -> String {
    match f {
        Finding::AgentAway(status) => format!("agent {status}"),
        Finding::NoAgentYet => "no agent connected yet".into(),
        Finding::CertificateExpired(e) => format!("a certificate expired {}", countdown(*e, now)),
        Finding::SuccessRate(r) => format!("success rate {:.1}%", r * 100.0),
        Finding::ControlPlaneNotReady { ready, want } => format!("control plane {ready}/{want} ready"),
        Finding::CertificateExpiring(e) => format!("a certificate expires {}", countdown(*e, now)),
        Finding::AllGood => "all good".into(),
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct Filters {
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub selector: String,
}

/// The organization's fleet as the overview shows it.
pub struct Snapshot {
    /// Every cluster with its health, worst first.
    rows: Vec<Row>,
    /// Request-rate trends of the first page of the unfiltered overview.
    trends: HashMap<ClusterId, Vec<(i64, f64)>>,
}

/// Reads the whole fleet, so it is cached per organization (see `FleetCache`).
async fn compute(state: &AppState, org: OrgId) -> Result<Snapshot, ApiError> {
    let live = liveness(state);
    let now = state.clock.now_ms();
    let mut conn = state.db.pool.acquire().await?;
    let everything = Selector::default();
    let clusters = store::clusters::list(&mut conn, org, &ListQuery { selector: &everything, status: None, after_name: None, limit: 100_000 }).await?;
    let golden = store::fleet::golden_since(&mut conn, org, now - RECENT_MS).await?;
    let facts = store::fleet::facts_of_org(&mut conn, org).await?;
    let versions = store::fleet::proxy_versions_of_org(&mut conn, org).await?;
    let was_degraded = state.fleet_cache.degraded_of(org);
    let mut rows: Vec<Row> = clusters
        .into_iter()
        .map(|cluster| {
            let g = golden.get(&cluster.id).copied().unwrap_or_default();
            let fact = facts.get(&cluster.id);
            let mesh_version = fact.map(|f| f.control_plane.version.clone()).unwrap_or_default();
            let nearest_expiry = fact.and_then(|f| f.certificates.iter().map(|c| c.not_after).min());
            let ready = fact.map(|f| (f.control_plane.ready_replicas, f.control_plane.replicas));
            let pods = versions.get(&cluster.id).map(Vec::as_slice).unwrap_or_default();
            let proxies = pods.iter().map(|(_, n)| n).sum();
            let outdated = pods.iter().filter(|(v, _)| !mesh_version.is_empty() && *v != mesh_version).map(|(_, n)| n).sum();
            let status = cluster.effective_status(&live).to_owned();
            let success_degraded = health::success_degraded(g.success_rate(), was_degraded.contains(&cluster.id));
            let signals = Signals { status: &status, success_rate: g.success_rate(), success_degraded, nearest_expiry, control_plane: ready, now };
            let (health, finding) = health::assess(&signals);
            let reason = reason(&finding, now);
            Row { success_degraded, cluster, status, health, reason, golden: g, mesh_version, nearest_expiry, proxies, outdated }
        })
        .collect();
    state.fleet_cache.remember_degraded(org, rows.iter().filter(|r| r.success_degraded).map(|r| r.cluster.id).collect());
    rows.sort_by(|a, b| a.health.cmp(&b.health).then_with(|| a.cluster.name.cmp(&b.cluster.name)));
    let first_page: Vec<ClusterId> = rows.iter().take(MAX_ROWS).filter(|r| r.golden.requests > 0).map(|r| r.cluster.id).collect();
    let trends = rates(&mut conn, org, &first_page, now).await?;
    Ok(Snapshot { rows, trends })
}

/// Requests per second per finished minute over the last half hour.
async fn rates(conn: &mut store::Conn, org: OrgId, ids: &[ClusterId], now: i64) -> Result<HashMap<ClusterId, Vec<(i64, f64)>>, ApiError> {
    let minutes = store::fleet::golden_by_minute_of(conn, org, ids, now - TREND_MS).await?;
    let finished = |ms: Vec<(i64, Golden)>| ms.into_iter().filter(|(m, _)| is_finished(*m, now)).map(|(m, g)| (m, g.requests as f64 / 60.0)).collect();
    Ok(minutes.into_iter().map(|(id, ms)| (id, finished(ms))).collect())
}

/// The fleet rows of each organization, at most `FRESH` old. A request that finds them older
/// gets them at once and starts one refresh in the background (stale-while-revalidate), so
/// pages and live updates stay fast however large the fleet; changes show within ~2 s.
#[derive(Default)]
pub struct FleetCache {
    entries: Mutex<HashMap<OrgId, CacheEntry>>,
    /// Clusters whose success rate counted as degraded at the last assessment, for the
    /// hysteresis of `domain::health`. Kept apart from the entries so that `invalidate` does
    /// not reset it. Per replica: a live view stays on one replica, so it never flips.
    degraded: Mutex<HashMap<OrgId, HashSet<ClusterId>>>,
}

struct CacheEntry {
    at: Instant,
    snapshot: Arc<Snapshot>,
    refreshing: bool,
}

const FRESH: Duration = Duration::from_secs(1);

impl FleetCache {
    /// Forgets an organization's rows, after a change the user expects to see at once.
    pub fn invalidate(&self, org: OrgId) {
        self.entries.lock().expect("fleet cache lock poisoned").remove(&org);
    }

    fn degraded_of(&self, org: OrgId) -> HashSet<ClusterId> {
        self.degraded.lock().expect("fleet cache lock poisoned").get(&org).cloned().unwrap_or_default()
    }

    fn remember_degraded(&self, org: OrgId, ids: HashSet<ClusterId>) {
        self.degraded.lock().expect("fleet cache lock poisoned").insert(org, ids);
    }

    async fn snapshot(state: &AppState, org: OrgId) -> Result<Arc<Snapshot>, ApiError> {
        let cache = &state.fleet_cache;
        let stale = {
            let mut entries = cache.entries.lock().expect("fleet cache lock poisoned");
            match entries.get_mut(&org) {
                Some(e) if e.at.elapsed() < FRESH || e.refreshing => return Ok(e.snapshot.clone()),
                Some(e) => {
                    e.refreshing = true;
                    Some(e.snapshot.clone())
                }
                None => None,
            }
        };
        match stale {
            Some(snapshot) => {
                let state = state.clone();
                tokio::spawn(async move {
                    let fresh = compute(&state, org).await;
                    let mut entries = state.fleet_cache.entries.lock().expect("fleet cache lock poisoned");
                    match fresh {
                        Ok(fresh) => {
                            entries.insert(org, CacheEntry { at: Instant::now(), snapshot: Arc::new(fresh), refreshing: false });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "refreshing the fleet overview failed");
                            if let Some(entry) = entries.get_mut(&org) {
                                entry.refreshing = false;
                            }
                        }
                    }
                });
                Ok(snapshot)
            }
            None => {
                let snapshot = Arc::new(compute(state, org).await?);
                cache
                    .entries
                    .lock()
                    .expect("fleet cache lock poisoned")
                    .insert(org, CacheEntry { at: Instant::now(), snapshot: snapshot.clone(), refreshing: false });
                Ok(snapshot)
            }
        }
    }
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
    let expiring = rows.iter().filter(|r| r.nearest_expiry.is_some_and(|e| e - now < 7 * DAY_MS)).count();
    let shown: Vec<&Row> = rows.iter().copied().take(MAX_ROWS).collect();
    let trends = trends(state, viewer, &snapshot, &shown, now).await?;
    Ok(html! {
        ul.summary aria-label="Fleet summary" {
            li.healthy { strong { (count(&[Health::Healthy])) } " healthy" }
            li.degraded { strong { (count(&[Health::Degraded, Health::Expiring])) } " degraded" }
            li.critical { strong { (rows.iter().filter(|r| r.status == "disconnected" || r.status == "stale").count()) } " disconnected or stale" }
            li.expiring { strong { (expiring) } " certificates expiring within 7 days" }
            li { strong { (count(&[Health::Pending])) } " waiting for an agent" }
        }
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
                            td { span class=(format!("badge health-{}", r.health.label())) title=(r.reason) { (r.health.label()) } span.reason { (r.reason) } }
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
    let live = format!("/ui/live?view=fleet&q={}&status={}&selector={}", enc(&f.q), enc(&f.status), enc(&f.selector));
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
            pre { code { "cargo run --release -p meshfleet-agent --bin meshfleet-sim -- \\\n  --api " (api) " --email " (viewer.email) " --password '…' --clusters 50" } }
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct LiveQuery {
    view: String,
    id: Option<ClusterId>,
    #[serde(flatten)]
    filters: Filters,
}

/// Server-sent events: the view's fragment, re-rendered every second and sent when it changed.
pub async fn live(State(state): State<AppState>, viewer: Viewer, OnPage(ApiQuery(q)): OnPage<ApiQuery<LiveQuery>>) -> Response {
    if !matches!((q.view.as_str(), q.id), ("fleet", _) | ("cluster", Some(_))) {
        return page_error(ApiError::field("view", "unknown live view"));
    }
    Sse::new(updates(state, viewer, q)).keep_alive(KeepAlive::default()).into_response()
}

fn updates(state: AppState, viewer: Viewer, q: LiveQuery) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold((state, viewer, q, 0u64), |(state, viewer, q, last)| async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let rendered = match (q.view.as_str(), q.id) {
                ("cluster", Some(id)) => super::cluster::fragment(&state, &viewer, id).await,
                _ => fragment(&state, &viewer, &q.filters).await,
            };
            let html = match rendered {
                Ok(m) => m.into_string(),
                Err(e) => html! { p.form-error role="alert" { (e.problem().detail.unwrap_or_default()) } }.into_string(),
            };
            let mut h = std::collections::hash_map::DefaultHasher::new();
            html.hash(&mut h);
            let digest = h.finish();
            if digest != last {
                return Some((Ok(Event::default().event("update").data(html)), (state, viewer, q, digest)));
            }
        }
    })
}
