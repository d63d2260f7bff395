//! The certificates page: the organization's trust domain and anchors and its current or latest
//! trust-anchor rotation (live), and each cluster's issuer. Reads go through the same store
//! functions as the API; admins create the first anchor and start, pause, resume, abort a
//! rotation (and exclude a cluster from it) through the API's own routes, as every dashboard
//! change does, so the checks, the audit trail and the 403 for viewers are the API's.

use std::collections::HashMap;

use axum::extract::State;
use maud::{html, Markup};

use super::{countdown, layout, page_error, timestamp, PageResult, Viewer};
use crate::app::AppState;
use crate::domain::labels::Selector;
use crate::domain::trust::{issuer_due_at, Anchor, AnchorState, Rotation, RotationPhase};
use crate::domain::{ClusterId, OrgId, UserId};
use crate::http::error::ApiError;
use crate::store;
use crate::store::clusters::ListQuery;

/// Clusters listed (by name); the API pages further.
const MAX_CLUSTERS: u32 = 500;
/// Hex digits of a fingerprint shown; the whole one is in the title.
const SHORT_FINGERPRINT: usize = 16;

const ROTATIONS: &str = "/api/v1/trust-anchors/rotations";

/// The way a rotation goes forward, and back once aborted.
const FORWARD: [RotationPhase; 4] = [RotationPhase::Distribute, RotationPhase::Reissue, RotationPhase::Retire, RotationPhase::Done];
const ROLLBACK: [RotationPhase; 4] = [RotationPhase::RollbackRetire, RotationPhase::RollbackReissue, RotationPhase::RollbackDistribute, RotationPhase::Aborted];

pub async fn page(State(state): State<AppState>, viewer: Viewer) -> PageResult {
    let org = viewer.principal.org_id;
    let now = state.clock.now_ms();
    let live = fragment(&state, &viewer).await.map_err(page_error)?;
    let issuers = issuers(&state, org, now).await.map_err(page_error)?;
    Ok(layout(
        "Certificates",
        Some(&viewer),
        html! {
            h1 { "Certificates" }
            div id="live" data-live=(super::fleet::live_url("view=certificates", &live)) aria-live="polite" { (live) }
            (issuers)
        },
    ))
}

async fn clusters(conn: &mut store::Conn, org: OrgId) -> Result<Vec<store::clusters::Cluster>, ApiError> {
    let everything = Selector::default();
    Ok(store::clusters::list(conn, org, &ListQuery { selector: &everything, status: None, after_name: None, limit: MAX_CLUSTERS }).await?)
}

/// The live part of the page: the anchors and the current or latest rotation, whose phases
/// change the anchors' states.
pub async fn fragment(state: &AppState, viewer: &Viewer) -> Result<Markup, ApiError> {
    let org = viewer.principal.org_id;
    let admin = viewer.can_change();
    let now = state.clock.now_ms();
    let mut conn = state.db.pool.acquire().await?;
    let trust_domain = store::trust::trust_domain(&mut conn, org).await?;
    let anchors = store::trust::anchors(&mut conn, org).await?;
    let latest = store::trust::rotations(&mut conn, org).await?.into_iter().next();
    let names: HashMap<ClusterId, String> = clusters(&mut conn, org).await?.into_iter().map(|c| (c.id, c.name)).collect();
    let started_by = match &latest {
        Some(r) => starter(&mut conn, &r.started_by).await?,
        None => String::new(),
    };
    drop(conn);
    let rotating = latest.as_ref().is_some_and(|r| !r.phase.finished());
    let has_active = anchors.iter().any(|a| a.state == AnchorState::Active);
    Ok(html! {
        section.card id="anchors" {
            h2 { "Trust anchors" }
            p { "Trust domain " code data-trust-domain { (trust_domain) } }
            @if anchors.is_empty() { p.muted { "No trust anchor yet: the service signs no cluster issuer until the organization has one." } } @else {
                (anchor_table(&anchors, now))
            }
            @if admin && !anchors.iter().any(|a| a.state.trusted()) {
                (action("/api/v1/trust-anchors", "Create trust anchor", "Generate a new trust anchor for the organization?"))
            }
        }
        section.card id="rotation" {
            h2 { "Trust-anchor rotation" }
            @match &latest {
                Some(r) => { (rotation(r, &anchors, &names, &started_by, admin)) }
                None => { p.muted { "No rotation yet." } }
            }
            @if admin && has_active && !rotating {
                (action(ROTATIONS, "Start rotation", "Generate a new trust anchor and rotate every cluster to it?"))
            }
        }
    })
}

/// Who started a rotation (`user:<id>` or `token:<id>`, as the API records it): a user's
/// e-mail, else the record as it is.
async fn starter(conn: &mut store::Conn, started_by: &str) -> Result<String, ApiError> {
    let user = started_by.strip_prefix("user:").and_then(|id| id.parse::<UserId>().ok());
    Ok(match user {
        Some(id) => store::accounts::user_email(conn, id).await?.unwrap_or_else(|| started_by.to_owned()),
        None => started_by.to_owned(),
    })
}

/// A fingerprint as the page shows it: its start, the whole one in the title.
fn fingerprint(fp: &str) -> Markup {
    html! { code.fingerprint title=(fp) { (fp.get(..SHORT_FINGERPRINT).unwrap_or(fp)) "…" } }
}

/// "expires in …", kept current by app.js.
fn expires(not_after: i64, now: i64) -> Markup {
    html! { "expires " time data-expires=(not_after) datetime=(crate::db::to_rfc3339(not_after).to_rfc3339()) title=(timestamp(not_after)) { (countdown(not_after, now)) } }
}

/// A button that posts to the API after the viewer confirms, then reloads the page.
fn action(api: &str, label: &str, confirm: &str) -> Markup {
    html! {
        form.inline data-api=(api) data-method="POST" data-then="reload" data-confirm=(confirm) data-mutates {
            button type="submit" { (label) }
            p.form-error role="alert" aria-live="polite" {}
        }
    }
}

fn anchor_table(anchors: &[Anchor], now: i64) -> Markup {
    html! {
        div.table-wrap { table.anchors {
            caption { "Oldest first; every cluster trusts the active, next and retiring ones" }
            thead { tr { th scope="col" { "Fingerprint" } th scope="col" { "Subject" } th scope="col" { "State" } th scope="col" { "Not after" } } }
            tbody { @for a in anchors {
                tr data-anchor=(a.fingerprint) data-state=(a.state.as_str()) {
                    td { (fingerprint(&a.fingerprint)) }
                    td { (a.subject) }
                    td { span class=(format!("badge anchor-{}", a.state.as_str())) { (a.state.as_str()) } }
                    td { (timestamp(a.not_after)) span.reason { (expires(a.not_after, now)) } }
                }
            } }
        } }
    }
}

/// The phases as steps: those passed, the current one, those to come. A rollback is not
/// marked passed: an abort starts the way back where the rotation was (an abort during
/// distribute skips rollback_retire and rollback_reissue), and the phase alone does not tell
/// which were.
fn stepper(phase: RotationPhase) -> Markup {
    let forward = FORWARD.contains(&phase);
    let path: &[RotationPhase] = if forward { &FORWARD } else { &ROLLBACK };
    let at = path.iter().position(|p| *p == phase).unwrap_or(0);
    html! {
        ol.stepper aria-label="Phases" {
            @for (i, p) in path.iter().enumerate() {
                @let current = i == at;
                li.passed[forward && i < at].current[current] data-step=(p.as_str()) aria-current=[current.then_some("step")] { (p.as_str().replace('_', " ")) }
            }
        }
    }
}

fn rotation(r: &Rotation, anchors: &[Anchor], names: &HashMap<ClusterId, String>, started_by: &str, admin: bool) -> Markup {
    let fp = |id| anchors.iter().find(|a| a.id == id).map(|a| a.fingerprint.as_str()).unwrap_or("");
    let base = format!("{ROTATIONS}/{}", r.id);
    let open = !r.phase.finished();
    html! {
        div data-rotation=(r.id) data-phase=(r.phase.as_str()) data-paused=(r.paused) {
            p {
                "From " (fingerprint(fp(r.old_anchor))) " to " (fingerprint(fp(r.new_anchor)))
                ", started " (timestamp(r.created_at)) " by " (started_by) ". "
                @if r.paused { span.badge.rotation-paused data-rotation-paused { "paused" } }
            }
            (stepper(r.phase))
            @if admin && open {
                div.actions {
                    @if r.paused { (action(&format!("{base}/resume"), "Resume", "Resume the rotation (and retry the clusters whose step failed)?")) }
                    @else { (action(&format!("{base}/pause"), "Pause", "Pause the rotation? Nothing more is sent until it is resumed.")) }
                    @if r.phase.abort().is_some() {
                        (action(&format!("{base}/abort"), "Abort", "Abort the rotation? Every cluster goes back to the old anchor."))
                    }
                }
            }
            @if r.clusters.is_empty() { p.muted { "No cluster has been looked at yet." } } @else {
                div.table-wrap { table.progress {
                    caption { "Each cluster in the current phase" }
                    thead { tr {
                        th scope="col" { "Cluster" } th scope="col" { "State" } th scope="col" { "Message" } th scope="col" { "Pods done" }
                        @if admin && open { th scope="col" { "Actions" } }
                    } }
                    tbody { @for (id, p) in &r.clusters {
                        @let name = names.get(id).cloned().unwrap_or_else(|| id.to_string());
                        tr data-progress=(name) data-state=(p.state.as_str()) {
                            th scope="row" { a href=(format!("/clusters/{id}")) { (name) } }
                            td { span class=(format!("badge progress-{}", p.state.as_str())) { (p.state.as_str().replace('_', " ")) } }
                            td { (p.message) }
                            td { (p.pods_done) " / " (p.pods_total) }
                            @if admin && open { td { @if !r.excluded.contains(id) {
                                form.inline data-api=(format!("{base}/exclude")) data-method="POST" data-then="reload"
                                    data-confirm=(format!("Exclude {name} from the rotation? It keeps the bundle and issuer it has.")) data-mutates {
                                    input type="hidden" name="cluster_id" value=(id);
                                    button type="submit" { "Exclude" }
                                    p.form-error role="alert" aria-live="polite" {}
                                }
                            } } }
                        }
                    } }
                } }
            }
        }
    }
}

/// Each cluster's issuer: the one the service last signed, or else the one its agent reports.
async fn issuers(state: &AppState, org: OrgId, now: i64) -> Result<Markup, ApiError> {
    let mut conn = state.db.pool.acquire().await?;
    let clusters = clusters(&mut conn, org).await?;
    let mut rows = Vec::with_capacity(clusters.len());
    for c in clusters {
        let signed = store::trust::issuer(&mut conn, org, c.id).await?;
        let reported = match &signed {
            Some(_) => None,
            None => store::inventory::facts(&mut conn, org, c.id).await?.and_then(|(f, _)| f.certificates.into_iter().find(|c| c.role == "issuer")),
        };
        rows.push((c, signed, reported));
    }
    let renew = state.config.issuer_renew_fraction;
    Ok(html! {
        section.card id="issuers" {
            h2 { "Cluster issuers" }
            @if rows.is_empty() { p.muted { "No cluster yet." } } @else {
                div.table-wrap { table.issuers {
                    caption { "The issuer each cluster's mesh signs its proxies' certificates with" }
                    thead { tr { th scope="col" { "Cluster" } th scope="col" { "Issuer" } th scope="col" { "Signed by" } th scope="col" { "Validity" } th scope="col" { "Rotation due" } } }
                    tbody { @for (c, signed, reported) in &rows {
                        tr data-issuer=(c.name) {
                            th scope="row" { a href=(format!("/clusters/{}", c.id)) { (c.name) } }
                            @match (signed, reported) {
                                (Some(i), _) => {
                                    td { (fingerprint(&i.fingerprint)) }
                                    td { "anchor " (fingerprint(&i.anchor_fingerprint)) }
                                    td { (expires(i.not_after, now)) }
                                    td { @let due = issuer_due_at(i.not_before, i.not_after, renew); (timestamp(due)) span.reason { (countdown(due, now)) } }
                                }
                                (None, Some(r)) => {
                                    td { (fingerprint(&r.sha256_fingerprint)) span.reason { (r.subject) } }
                                    td { span.muted data-unsigned { "not signed by the service" } }
                                    td { (expires(r.not_after, now)) }
                                    td { "–" }
                                }
                                (None, None) => { td colspan="4" { span.muted data-unsigned { "not signed by the service; no issuer reported" } } }
                            }
                        }
                    } }
                } }
            }
        }
    })
}
