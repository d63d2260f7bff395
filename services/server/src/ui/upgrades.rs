//! The Upgrades page: how far behind each cluster is (the same answer as
//! `GET /api/v1/clusters/{id}/upgrades`), the rollouts with their waves, each cluster's phase
//! and the gates' measured values, kept live; and, for admins, the rollout form (plan preview
//! and start) and the steering buttons. Every change goes through the JSON API.

use std::collections::HashMap;

use axum::extract::State;
use maud::{html, Markup};
use serde::Serialize;

use super::{countdown, layout, page_error, timestamp, OnPage, PageResult, Viewer};
use crate::app::AppState;
use crate::domain::labels::Selector;
use crate::domain::rollouts::{ClusterRun, Measured, Phase, Rollout, RolloutState, Settings};
use crate::domain::{OrgId, RolloutId, UserId};
use crate::http::error::ApiError;
use crate::http::extract::ApiPath;
use crate::http::releases::{upgrades_of, ClusterUpgrades, SupportView};
use crate::store;
use crate::store::clusters::{Cluster, ListQuery};

/// Clusters the versions table shows at most, furthest behind first.
const MAX_CLUSTERS: usize = 500;
/// Rollouts read for the page, newest first; the unfinished ones and the newest are shown in
/// full, the others as a line each.
const MAX_ROLLOUTS: u32 = 20;
const ROLLOUTS: &str = "/api/v1/rollouts";

/// A serde enum's wire name (`rolled_back`), which the API shows and the styles key on.
fn name(v: impl Serialize) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// Each cluster of the organization (name order) and its upgrades.
async fn versions(state: &AppState, org: OrgId) -> Result<Vec<(Cluster, ClusterUpgrades)>, ApiError> {
    let now = state.clock.now_ms();
    let every: Selector = Selector::default();
    let mut conn = state.db.pool.acquire().await?;
    let clusters = store::clusters::list(&mut conn, org, &ListQuery { selector: &every, status: None, after_name: None, limit: 100_000 }).await?;
    let mut reported = store::inventory::control_plane_versions(&mut conn, org).await?;
    let policies = store::upgrade_policies::list(&mut conn, org).await?;
    drop(conn);
    let catalog = state.releases.get(&state.db, now).await?;
    Ok(clusters
        .into_iter()
        .map(|c| {
            let u = upgrades_of(&catalog, &c, reported.remove(&c.id), &policies, now);
            (c, u)
        })
        .collect())
}

fn versions_card(rows: &[(Cluster, ClusterUpgrades)], now: i64) -> Markup {
    let behind = rows.iter().filter(|(_, u)| !u.available.is_empty()).count();
    let mut shown: Vec<&(Cluster, ClusterUpgrades)> = rows.iter().collect();
    shown.sort_by_key(|(c, u)| (std::cmp::Reverse(u.available.len()), c.name.clone()));
    shown.truncate(MAX_CLUSTERS);
    html! {
        section.card id="versions" {
            h2 { "Versions behind" }
            @if rows.is_empty() { p.muted { "No cluster yet." } } @else {
                p { strong data-behind-count=(behind) { (behind) } " of " (rows.len()) " clusters can be upgraded." }
                div.table-wrap { table.versions {
                    caption { "Furthest behind first" @if rows.len() > MAX_CLUSTERS { " (the first " (MAX_CLUSTERS) ")" } }
                    thead { tr {
                        th scope="col" { "Cluster" } th scope="col" { "Control plane" } th scope="col" { "Channel" }
                        th scope="col" { "Newest reachable" } th scope="col" { "Behind" } th scope="col" { "Blocked" } th scope="col" { "Policy" }
                    } }
                    tbody { @for (c, u) in &shown { (version_row(c, u, now)) } }
                } }
            }
        }
    }
}

fn version_row(c: &Cluster, u: &ClusterUpgrades, now: i64) -> Markup {
    let newest = u.available.first();
    html! {
        tr data-versions=(c.name) data-behind=(u.available.len()) {
            th scope="row" { a href=(format!("/clusters/{}", c.id)) { (c.name) } }
            td {
                (u.control_plane_version.as_deref().unwrap_or("–"))
                @match u.support {
                    Some(SupportView::Supported) | None => {},
                    Some(s) => { " " span class=(format!("badge support-{}", name(s))) { (name(s)) } },
                }
                @if u.control_plane_version.is_none() { span.reason { "not reported yet" } }
            }
            td { (u.channel.as_str()) }
            td data-newest { @match newest {
                Some(a) => { (a.release.version) @if a.hops.len() > 1 { span.reason { "via " (a.hops.join(" → ")) } } },
                None => { @if u.control_plane_version.is_some() { span.muted { "up to date" } } @else { "–" } },
            } }
            td { strong { (u.available.len()) } }
            td data-blocked { @match newest.and_then(|a| a.blocked.as_deref()) { Some(why) => { span.warn { (why) } }, None => { "–" } } }
            td data-policy {
                @match &u.policy { Some(p) => { (p.name) }, None => { span.muted { "defaults" } } }
                @if let Some(pin) = &u.pinned_version { span.reason { "pinned to " (pin) } }
                @if u.excluded { span.reason.warn { "excluded from rollouts" } }
                @match u.next_window {
                    Some(t) if t.timestamp_millis() > now => { span.reason { "next window " (countdown(t.timestamp_millis(), now)) } },
                    Some(_) => {},
                    None => { span.reason.warn { "no window in the next week" } },
                }
            }
        }
    }
}

/// Who started a rollout: a user's e-mail, else the actor id as the API records it.
async fn names(conn: &mut store::Conn, rollouts: &[Rollout]) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for r in rollouts {
        if out.contains_key(&r.created_by) {
            continue;
        }
        let email = match r.created_by.parse::<UserId>() {
            Ok(id) => store::accounts::user_email(conn, id).await?,
            Err(_) => None,
        };
        out.insert(r.created_by.clone(), email.unwrap_or_else(|| format!("API token {}", r.created_by)));
    }
    Ok(out)
}

/// A button that posts to the API (after a confirmation, when given), then reloads the page.
fn action(api: &str, label: &str, confirm: Option<&str>) -> Markup {
    html! {
        form.inline data-api=(api) data-method="POST" data-then="reload" data-confirm=[confirm] data-mutates {
            button type="submit" { (label) }
            p.form-error role="alert" aria-live="polite" {}
        }
    }
}

fn open(r: &Rollout) -> bool {
    matches!(r.state, RolloutState::Running | RolloutState::Paused)
}

/// Golden metrics as a gate saw them.
fn golden(m: Option<&Measured>) -> Markup {
    html! { @match m {
        None => { "–" },
        Some(m) => {
            @match m.success_rate { Some(s) => { (format!("{:.2}%", s * 100.0)) }, None => { "no traffic" } }
            @if let Some(p) = m.p99_ms { " · p99 " (format!("{p:.1} ms")) }
            span.reason { (m.requests) " requests" }
        },
    } }
}

fn settings_line(s: &Settings) -> Markup {
    let w = &s.waves;
    html! {
        p.settings {
            @match &w.canary_selector { Some(sel) => { "Canaries " code { (sel) } }, None => { (w.canary_count) " canary" @if w.canary_count != 1 { "s" } } }
            ", then " (w.batch_percent) "% per wave; at most " (s.max_concurrent) " at once; watched " (s.verify_seconds) " s; soak " (s.soak_seconds) " s. "
            "Gates: success rate may fall " (s.gates.max_success_rate_drop_points) " points, p99 may rise " (s.gates.max_p99_increase_percent) "%."
        }
    }
}

/// The waves as steps: those done, the current one, those to come.
fn waves(r: &Rollout) -> Markup {
    html! {
        ol.stepper aria-label="Waves" {
            @for w in 0..r.waves {
                @let n = r.clusters.iter().filter(|c| c.wave == w).count();
                @let current = w == r.wave && open(r);
                li.passed[w < r.wave].current[current] data-wave=(w) aria-current=[current.then_some("step")] {
                    "wave " (w + 1) " (" (n) " cluster" @if n != 1 { "s" } ")"
                }
            }
        }
    }
}

fn cluster_row(r: &Rollout, c: &ClusterRun, admin: bool) -> Markup {
    let base = format!("{ROLLOUTS}/{}/clusters/{}", r.id, c.id);
    let phase = name(c.phase);
    let actions = admin && open(r);
    let path: Vec<&str> = std::iter::once(c.from.as_str()).chain(c.hops.iter().map(String::as_str)).collect();
    html! {
        tr data-run=(c.name) data-phase=(phase) {
            th scope="row" { a href=(format!("/clusters/{}", c.id)) { (c.name) } }
            td { (c.wave + 1) }
            td { (path.join(" → ")) @if c.hops.len() > 1 && c.phase.in_progress() { span.reason { "hop " (c.hop + 1) " of " (c.hops.len()) } } }
            td { span class=(format!("badge phase-{phase}")) { (phase.replace('_', " ")) } }
            td data-baseline { (golden(c.baseline.as_ref())) }
            td data-measured { (golden(c.measured.as_ref())) }
            td data-message { (c.message) }
            @if actions { td {
                @if matches!(c.phase, Phase::Pending | Phase::RolledBack) {
                    (action(&format!("{base}/skip"), "Skip", Some(&format!("Skip {} for the rest of this rollout?", c.name))))
                }
                @if matches!(c.phase, Phase::RolledBack | Phase::Skipped) { (action(&format!("{base}/retry"), "Retry", None)) }
            } }
        }
    }
}

/// One rollout in full: state, waves, settings and gates, each cluster, the actions.
fn rollout(r: &Rollout, started_by: &str, admin: bool, now: i64) -> Markup {
    let base = format!("{ROLLOUTS}/{}", r.id);
    let state = name(r.state);
    let done = r.clusters.iter().filter(|c| c.phase == Phase::Done).count();
    html! {
        article.rollout data-rollout=(r.id) data-state=(state) {
            h3 {
                a href=(format!("/upgrades/rollouts/{}", r.id)) { "To " (r.target_version) }
                " " span class=(format!("badge rollout-{state}")) data-rollout-state { (state) }
            }
            p {
                "Started " (timestamp(r.created_at.timestamp_millis())) " by " (started_by) " over "
                @if r.selector.is_empty() { "every cluster" } @else { code { (r.selector) } }
                ". " strong data-done=(done) { (done) " of " (r.clusters.len()) } " clusters done."
                @if let Some(t) = r.wave_done_at.filter(|_| open(r)) {
                    @let next = t.timestamp_millis() + i64::from(r.settings.soak_seconds) * 1000;
                    " Soaking: the next wave starts " @if next > now { (countdown(next, now)) } @else { "now" } "."
                }
            }
            @if let Some(reason) = &r.reason { p.warn data-rollout-reason { (reason) } }
            (waves(r))
            (settings_line(&r.settings))
            @if admin && open(r) {
                div.actions {
                    @if r.state == RolloutState::Paused { (action(&format!("{base}/resume"), "Resume", None)) }
                    @else { (action(&format!("{base}/pause"), "Pause", None)) }
                    (action(&format!("{base}/abort"), "Abort", Some("Abort the rollout? Nothing more is sent; clusters keep the version they reached.")))
                }
            }
            @if !r.clusters.is_empty() {
                div.table-wrap { table.runs {
                    caption { "Each cluster: its gates compare the metrics while it is watched with its baseline from before it started" }
                    thead { tr {
                        th scope="col" { "Cluster" } th scope="col" { "Wave" } th scope="col" { "Path" } th scope="col" { "Phase" }
                        th scope="col" { "Baseline" } th scope="col" { "Now" } th scope="col" { "Step" }
                        @if admin && open(r) { th scope="col" { "Actions" } }
                    } }
                    tbody { @for c in &r.clusters { (cluster_row(r, c, admin)) } }
                } }
            }
            @if !r.skipped.is_empty() {
                p { "Left out when planned:" }
                ul.skipped { @for s in &r.skipped { li data-left-out=(s.name) { a href=(format!("/clusters/{}", s.id)) { (s.name) } ": " (s.reason) } } }
            }
        }
    }
}

/// The live part of the page: the versions behind and the rollouts.
pub async fn fragment(state: &AppState, viewer: &Viewer) -> Result<Markup, ApiError> {
    let org = viewer.principal.org_id;
    let now = state.clock.now_ms();
    let rows = versions(state, org).await?;
    let mut conn = state.db.pool.acquire().await?;
    let rollouts = store::rollouts::list(&mut conn, org, MAX_ROLLOUTS).await?;
    let starters = names(&mut conn, &rollouts).await?;
    drop(conn);
    let admin = viewer.can_change();
    let (full, earlier): (Vec<_>, Vec<_>) = rollouts.iter().enumerate().partition(|(i, r)| *i == 0 || open(r));
    Ok(html! {
        (versions_card(&rows, now))
        section.card id="rollouts" {
            h2 { "Rollouts" }
            @if rollouts.is_empty() { p.muted { "No rollout yet." } }
            @for (_, r) in &full { (rollout(r, &starters[&r.created_by], admin, now)) }
            @if !earlier.is_empty() {
                div.table-wrap { table.earlier {
                    caption { "Earlier rollouts, newest first" }
                    thead { tr { th scope="col" { "Target" } th scope="col" { "State" } th scope="col" { "Clusters done" } th scope="col" { "Started" } } }
                    tbody { @for (_, r) in &earlier {
                        tr data-earlier=(r.id) {
                            th scope="row" { a href=(format!("/upgrades/rollouts/{}", r.id)) { (r.target_version) } }
                            td { span class=(format!("badge rollout-{}", name(r.state))) { (name(r.state)) } }
                            td { (r.clusters.iter().filter(|c| c.phase == Phase::Done).count()) " of " (r.clusters.len()) }
                            td { (timestamp(r.created_at.timestamp_millis())) }
                        }
                    } }
                } }
            }
        }
    })
}

/// The form of a rollout as `POST /api/v1/rollouts` takes it (app.js shapes the body), with a
/// plan preview from `POST /api/v1/rollouts/plan` shown before anything starts.
async fn rollout_form(state: &AppState) -> Result<Markup, ApiError> {
    let catalog = state.releases.get(&state.db, state.clock.now_ms()).await?;
    let d = Settings::default();
    Ok(html! {
        section.card id="new-rollout" {
            h2 { "Start a rollout" }
            form data-api=(ROLLOUTS) data-method="POST" data-shape="rollout" data-mutates {
                label for="target-version" { "Target version" }
                select id="target-version" name="target_version" required {
                    @for r in catalog.releases().iter().rev().filter(|r| !r.yanked) {
                        option value=(r.version) { (r.version) " (" (r.channel.as_str()) ", " (r.released_on) ")" }
                    }
                }
                label for="rollout-selector" { "Clusters (a label selector; empty: every cluster)" }
                input id="rollout-selector" name="selector" placeholder="env=prod";
                fieldset {
                    legend { "Waves" }
                    label for="canary-count" { "Canary clusters (first by name; 0 for none)" }
                    input id="canary-count" name="canary_count" type="number" min="0" max="1000" required value=(d.waves.canary_count);
                    label for="canary-selector" { "Or canaries by label (replaces the count)" }
                    input id="canary-selector" name="canary_selector" placeholder="tier=canary";
                    label for="batch-percent" { "Batch size after the canaries (% of the rest)" }
                    input id="batch-percent" name="batch_percent" type="number" min="1" max="100" required value=(d.waves.batch_percent);
                    label for="max-concurrent" { "Clusters upgrading at once, at most" }
                    input id="max-concurrent" name="max_concurrent" type="number" min="1" max="1000" required value=(d.max_concurrent);
                    label for="verify-seconds" { "Watch each cluster before judging its gates (seconds)" }
                    input id="verify-seconds" name="verify_seconds" type="number" min="1" max="86400" required value=(d.verify_seconds);
                    label for="soak-seconds" { "Soak after each wave (seconds)" }
                    input id="soak-seconds" name="soak_seconds" type="number" min="0" max="604800" required value=(d.soak_seconds);
                }
                fieldset {
                    legend { "Gates (each cluster against its own baseline)" }
                    label for="max-drop" { "Success rate may fall by at most (percentage points)" }
                    input id="max-drop" name="max_success_rate_drop_points" type="number" min="0" max="100" step="any" required value=(d.gates.max_success_rate_drop_points);
                    label for="max-p99" { "p99 latency may rise by at most (%)" }
                    input id="max-p99" name="max_p99_increase_percent" type="number" min="0" max="10000" step="any" required value=(d.gates.max_p99_increase_percent);
                }
                p.form-error role="alert" aria-live="polite" {}
                div.actions {
                    button.secondary type="submit" data-api=(format!("{ROLLOUTS}/plan")) data-then="plan" data-preview { "Preview plan" }
                    button type="submit" data-confirm="Start this rollout now? Its first wave begins at once." data-start { "Start rollout" }
                }
                output.plan aria-live="polite" {}
            }
        }
    })
}

pub async fn page(State(state): State<AppState>, viewer: Viewer) -> PageResult {
    let live = fragment(&state, &viewer).await.map_err(page_error)?;
    let form = if viewer.can_change() { Some(rollout_form(&state).await.map_err(page_error)?) } else { None };
    Ok(layout(
        "Upgrades",
        Some(&viewer),
        html! {
            h1 { "Upgrades" }
            div id="live" data-live=(super::fleet::live_url("view=upgrades", &live)) aria-live="polite" { (live) }
            @if let Some(form) = form { (form) }
        },
    ))
}

/// The live part of a rollout's own page.
pub async fn rollout_fragment(state: &AppState, viewer: &Viewer, id: RolloutId) -> Result<Markup, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    let r = store::rollouts::get(&mut conn, viewer.principal.org_id, id).await?.ok_or(ApiError::NotFound("rollout"))?;
    let starters = names(&mut conn, std::slice::from_ref(&r)).await?;
    drop(conn);
    Ok(html! { section.card { (rollout(&r, &starters[&r.created_by], viewer.can_change(), state.clock.now_ms())) } })
}

/// One rollout, also when it is no longer among the newest; another organization's is not found.
pub async fn rollout_page(State(state): State<AppState>, viewer: Viewer, OnPage(ApiPath(id)): OnPage<ApiPath<String>>) -> PageResult {
    let id: RolloutId = id.parse().map_err(|_| page_error(ApiError::NotFound("rollout")))?;
    let live = rollout_fragment(&state, &viewer, id).await.map_err(page_error)?;
    Ok(layout(
        "Rollout",
        Some(&viewer),
        html! {
            p { a href="/upgrades" { "← Upgrades" } }
            h1 { "Rollout" }
            div id="live" data-live=(super::fleet::live_url(&format!("view=rollout&rollout={id}"), &live)) aria-live="polite" { (live) }
        },
    ))
}
