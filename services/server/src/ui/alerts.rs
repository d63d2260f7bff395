//! The alerts page: what is open now (live), recent history, and the silences with the
//! admins' create form and expire action; and the firing-alerts card of the fleet overview and
//! the cluster page. Reads take the viewer's organization; every change goes through the API.

use axum::extract::State;
use maud::{html, Markup};

use super::{ago, layout, page_error, timestamp, PageResult, Viewer};
use crate::app::AppState;
use crate::domain::alerting::AlertState;
use crate::domain::silences::{MatchOp, Silence, SilenceState};
use crate::domain::{ClusterId, OrgId};
use crate::http::error::ApiError;
use crate::store;
use crate::store::alerts::Alert;

/// Open alerts read at most, for this page and the firing cards.
const MAX_OPEN: u32 = 200;
/// Rows of a firing card (the fleet's, a cluster's); the alerts page has them all.
const CARD_ROWS: usize = 10;
/// Resolved alerts the history shows.
const MAX_HISTORY: u32 = 50;
/// Silences listed, newest first.
const MAX_SILENCES: u32 = 100;

/// How long a new silence lasts, offered in the form (seconds, words).
const DURATIONS: [(u32, &str); 6] = [(3600, "1 hour"), (7200, "2 hours"), (14_400, "4 hours"), (28_800, "8 hours"), (86_400, "1 day"), (604_800, "7 days")];

/// The labels a matcher can name besides the cluster's own (README, "Silences").
const MATCHER_LABELS: [&str; 5] = ["alertname", "severity", "cluster", "check", "object"];

/// The organization's alerts in `states` (of one cluster, when given), worst first, and the
/// silences active now.
async fn open_alerts(state: &AppState, org: OrgId, states: &[AlertState], cluster: Option<ClusterId>) -> Result<(Vec<Alert>, Vec<Silence>), ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    let mut alerts = store::alerts::list(&mut conn, org, states, cluster, None, MAX_OPEN).await?;
    // Newest first from the store; firing before pending, the most severe first.
    alerts.sort_by_key(|a| (a.state != AlertState::Firing, a.severity));
    let active = store::silences::active(&mut conn, org, state.clock.now_ms()).await?;
    Ok((alerts, active))
}

fn cluster_name(a: &Alert) -> String {
    a.labels.get("cluster").cloned().unwrap_or_else(|| a.cluster_id.to_string())
}

/// A table of open alerts: severity, state, cluster, rule, summary, since, silenced by.
fn open_table(alerts: &[Alert], active: &[Silence], now: i64, caption: &str) -> Markup {
    html! {
        div.table-wrap { table.alerts {
            caption { (caption) }
            thead { tr {
                th scope="col" { "Severity" } th scope="col" { "State" } th scope="col" { "Cluster" } th scope="col" { "Rule" }
                th scope="col" { "Summary" } th scope="col" { "Since" } th scope="col" { "Silenced by" }
            } }
            tbody { @for a in alerts {
                @let since = a.fired_at.unwrap_or(a.starts_at);
                tr data-alert=(a.rule) data-state=(a.state.as_str()) {
                    td { span class=(format!("badge severity-{}", a.severity.as_str())) { (a.severity.as_str()) } }
                    td { span class=(format!("badge alert-{}", a.state.as_str())) { (a.state.as_str()) } }
                    td { a href=(format!("/clusters/{}", a.cluster_id)) { (cluster_name(a)) } }
                    th scope="row" { (a.rule) @if !a.object.is_empty() { span.reason { (a.object) } } }
                    td { (a.summary) }
                    td { time datetime=(crate::db::to_rfc3339(since).to_rfc3339()) title=(timestamp(since)) { (ago(since, now)) } }
                    td { @let by = a.muted_by(active, now); @if by.is_empty() { "–" } @else {
                        @for s in by { a.silenced-by href=(format!("/alerts#silence-{}", s.id)) title=(s.comment) { (s.comment) } " " }
                    } }
                }
            } }
        } }
    }
}

/// The firing alerts of the organization, or of one cluster: the card of the fleet overview
/// and of the cluster page, re-rendered with their live fragments.
pub async fn firing_card(state: &AppState, viewer: &Viewer, cluster: Option<ClusterId>) -> Result<Markup, ApiError> {
    let (alerts, active) = open_alerts(state, viewer.principal.org_id, &[AlertState::Firing], cluster).await?;
    let now = state.clock.now_ms();
    Ok(html! {
        section.card.firing aria-label="Firing alerts" {
            h2 { "Firing alerts " span.badge.count.severity-critical[!alerts.is_empty()] data-firing-count=(alerts.len()) { (alerts.len()) } }
            @if alerts.is_empty() { p.muted { "No alert is firing." } } @else {
                @let caption = if alerts.len() > CARD_ROWS { format!("Firing now, most severe first (the first {CARD_ROWS})") } else { "Firing now, most severe first".to_owned() };
                (open_table(&alerts[..alerts.len().min(CARD_ROWS)], &active, now, &caption))
            }
            p { a href="/alerts" { "All alerts and silences" } }
        }
    })
}

/// The live part of the alerts page: the open alerts.
pub async fn fragment(state: &AppState, viewer: &Viewer) -> Result<Markup, ApiError> {
    let (alerts, active) = open_alerts(state, viewer.principal.org_id, &[AlertState::Firing, AlertState::Pending], None).await?;
    let now = state.clock.now_ms();
    let firing = alerts.iter().filter(|a| a.state == AlertState::Firing).count();
    Ok(html! {
        h2 { "Open alerts" }
        p { strong data-firing-count=(firing) { (firing) } " firing, " (alerts.len() - firing) " pending (their finding has not yet held for the rule's \u{201c}for\u{201d} duration)." }
        @if !alerts.is_empty() { (open_table(&alerts, &active, now, "Firing first, most severe first")) }
    })
}

pub async fn page(State(state): State<AppState>, viewer: Viewer) -> PageResult {
    let org = viewer.principal.org_id;
    let now = state.clock.now_ms();
    let live = fragment(&state, &viewer).await.map_err(page_error)?;
    let mut conn = state.db.pool.acquire().await.map_err(page_error)?;
    let history = store::alerts::list(&mut conn, org, &[AlertState::Resolved], None, None, MAX_HISTORY).await.map_err(page_error)?;
    let silences = store::silences::list(&mut conn, org, None, now, None, MAX_SILENCES).await.map_err(page_error)?;
    drop(conn);
    Ok(layout(
        "Alerts",
        Some(&viewer),
        html! {
            h1 { "Alerts" }
            section.card { div id="live" data-live=(super::fleet::live_url("view=alerts", &live)) aria-live="polite" { (live) } }
            section.card id="history" {
                h2 { "Recently resolved" }
                @if history.is_empty() { p.muted { "No alert has resolved yet." } } @else {
                    div.table-wrap { table {
                        caption { "The last " (MAX_HISTORY) " at most, newest first" }
                        thead { tr {
                            th scope="col" { "Severity" } th scope="col" { "Cluster" } th scope="col" { "Rule" } th scope="col" { "Summary" }
                            th scope="col" { "Began" } th scope="col" { "Resolved" }
                        } }
                        tbody { @for a in &history {
                            tr data-resolved=(a.rule) {
                                td { span class=(format!("badge severity-{}", a.severity.as_str())) { (a.severity.as_str()) } }
                                td { a href=(format!("/clusters/{}", a.cluster_id)) { (cluster_name(a)) } }
                                th scope="row" { (a.rule) @if !a.object.is_empty() { span.reason { (a.object) } } }
                                td { (a.summary) }
                                td { (timestamp(a.starts_at)) }
                                td { @match a.ends_at { Some(t) => { (timestamp(t)) }, None => { "–" } } }
                            }
                        } }
                    } }
                }
            }
            (silences_card(&silences, now, viewer.can_change()))
        },
    ))
}

fn op_str(op: MatchOp) -> &'static str {
    match op {
        MatchOp::Eq => "=",
        MatchOp::NotEq => "!=",
        MatchOp::Re => "=~",
        MatchOp::NotRe => "!~",
    }
}

fn silence_state(s: SilenceState) -> &'static str {
    match s {
        SilenceState::Pending => "pending",
        SilenceState::Active => "active",
        SilenceState::Expired => "expired",
    }
}

/// The silences (expired ones stay listed), with the create form and expire buttons for admins.
fn silences_card(silences: &[Silence], now: i64, admin: bool) -> Markup {
    html! {
        section.card id="silences" {
            h2 { "Silences" }
            p.muted { "A silence mutes the notifications of the alerts all its matchers match; the alerts still fire and resolve." }
            @if silences.is_empty() { p.muted { "No silences." } } @else {
                div.table-wrap { table {
                    thead { tr {
                        th scope="col" { "State" } th scope="col" { "Matchers" } th scope="col" { "Starts" } th scope="col" { "Ends" }
                        th scope="col" { "Comment" } th scope="col" { "Created by" } @if admin { th scope="col" { "Actions" } }
                    } }
                    tbody { @for s in silences {
                        @let state = silence_state(s.state(now));
                        tr id=(format!("silence-{}", s.id)) data-silence=(s.id) data-state=(state) {
                            td { span class=(format!("badge silence-{state}")) { (state) } }
                            td { @for m in s.matchers.specs() { code { (m.name) " " (op_str(m.op)) " \"" (m.value) "\"" } " " } }
                            td { (timestamp(s.starts_at)) }
                            td { (timestamp(s.ends_at)) }
                            td { (s.comment) }
                            td { (s.created_by.name) }
                            @if admin { td { @if state != "expired" {
                                form.inline data-api=(format!("/api/v1/silences/{}", s.id)) data-method="DELETE" data-then="reload" data-mutates {
                                    button type="submit" { "Expire" }
                                    p.form-error role="alert" aria-live="polite" {}
                                }
                            } } }
                        }
                    } }
                } }
            }
            @if admin { (silence_form()) }
        }
    }
}

/// The form of a new silence; app.js turns its matcher rows, duration or end, and comment into
/// the API's body (`data-shape="silence"`).
fn silence_form() -> Markup {
    html! {
        h3 { "New silence" }
        form id="silence-form" data-api="/api/v1/silences" data-method="POST" data-then="reload" data-shape="silence" data-mutates {
            datalist id="matcher-labels" { @for l in MATCHER_LABELS { option value=(l) {} } }
            fieldset data-matchers {
                legend { "Matchers (all must match; a regular expression must match the whole value)" }
                div.matcher data-matcher {
                    label { "Label " input id="matcher-name" data-part="name" list="matcher-labels" required placeholder="alertname"; }
                    label { "Operator " select id="matcher-op" data-part="op" { @for op in [MatchOp::Eq, MatchOp::NotEq, MatchOp::Re, MatchOp::NotRe] { option value=(op_str(op)) { (op_str(op)) } } } }
                    label { "Value " input id="matcher-value" data-part="value" placeholder="control_plane"; }
                }
            }
            button.secondary type="button" data-add-matcher { "Add a matcher" }
            label for="silence-duration" { "For" }
            select id="silence-duration" name="duration" { @for (secs, words) in DURATIONS { option value=(secs) selected[secs == 7200] { (words) } } }
            label for="silence-ends" { "Or until (your local time; overrides the duration)" }
            input id="silence-ends" name="ends_at" type="datetime-local";
            label for="silence-comment" { "Comment (why)" }
            textarea id="silence-comment" name="comment" required maxlength="1000" rows="2" {}
            p.form-error role="alert" aria-live="polite" {}
            button type="submit" { "Create silence" }
        }
    }
}
