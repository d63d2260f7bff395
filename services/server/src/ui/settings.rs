//! Settings: members and roles, API tokens, and the audit log (paged, with people's e-mails
//! and things' names rather than ids).

use std::collections::HashMap;

use axum::extract::State;
use maud::{html, Markup};
use serde::Deserialize;

use super::{layout, page_error, OnPage, PageResult, Viewer};
use crate::app::AppState;
use crate::db::to_rfc3339;
use crate::domain::audit::Actor;
use crate::domain::Role;
use crate::http::extract::ApiQuery;
use crate::store;

/// Audit entries per page.
const AUDIT_PAGE: u32 = 50;

#[derive(Debug, Default, Deserialize)]
pub struct SettingsQuery {
    /// The id of the last audit entry of the previous page.
    audit_before: Option<uuid::Uuid>,
}

pub async fn page(State(state): State<AppState>, viewer: Viewer, OnPage(ApiQuery(q)): OnPage<ApiQuery<SettingsQuery>>) -> PageResult {
    let org = viewer.principal.org_id;
    let admin = viewer.can_change();
    let me = match viewer.principal.actor {
        Actor::User { id, .. } => Some(id),
        Actor::ApiToken(_) => None,
    };
    let mut conn = state.db.pool.acquire().await.map_err(page_error)?;
    let members = store::accounts::list_members(&mut conn, org).await.map_err(page_error)?;
    let (tokens, audit, older, names) = if admin {
        let tokens = store::api_tokens::list(&mut conn, org).await.map_err(page_error)?;
        let rows = store::audit::list(&mut conn, org, q.audit_before, AUDIT_PAGE + 1).await.map_err(page_error)?;
        let (audit, older) = crate::http::into_page(rows, AUDIT_PAGE, |e| e.id.to_string());
        let names = store::audit::names(&mut conn, org, &audit).await.map_err(page_error)?;
        (tokens, audit, older, names)
    } else {
        (vec![], vec![], None, HashMap::new())
    };
    let name = |kind: &str, id: &str, details: &serde_json::Value| describe(&names, &viewer.org_name, kind, id, details);
    Ok(layout(
        "Settings",
        Some(&viewer),
        html! {
            h1 { "Settings" }
            section.card {
                h2 { "Members" }
                div.table-wrap { table {
                    thead { tr { th scope="col" { "E-mail" } th scope="col" { "Role" } @if admin { th scope="col" { "Actions" } } } }
                    tbody { @for m in &members {
                        tr {
                            th scope="row" { (m.email) }
                            td { @if admin {
                                form.inline data-api=(format!("/api/v1/members/{}", m.user_id)) data-method="PATCH" data-then="reload" data-mutates {
                                    label.visually-hidden for=(format!("role-{}", m.user_id)) { "Role of " (m.email) }
                                    select id=(format!("role-{}", m.user_id)) name="role" data-submit-on-change {
                                        @for r in [Role::Owner, Role::Admin, Role::Viewer] { option value=(r.as_str()) selected[r == m.role] { (r.as_str()) } }
                                    }
                                }
                            } @else { (m.role.as_str()) } }
                            @if admin { td {
                                // Leaving the organization is not a one-click table action.
                                @if Some(m.user_id) != me { form.inline data-api=(format!("/api/v1/members/{}", m.user_id)) data-method="DELETE" data-then="reload" data-confirm=(format!("Remove {}?", m.email)) data-mutates {
                                    button type="submit" { "Remove" }
                                } }
                            } }
                        }
                    } }
                } }
                @if admin {
                    form data-api="/api/v1/members" data-method="POST" data-then="reload" data-mutates {
                        label for="member-email" { "Add an existing user by e-mail" }
                        input id="member-email" name="email" type="email" required;
                        label for="member-role" { "Role" }
                        select id="member-role" name="role" { option value="viewer" { "viewer" } option value="admin" { "admin" } option value="owner" { "owner" } }
                        p.form-error role="alert" aria-live="polite" {}
                        button type="submit" { "Add member" }
                    }
                }
            }
            @if admin {
                section.card {
                    h2 { "API tokens" }
                    @if tokens.is_empty() { p.muted { "No API tokens." } }
                    ul { @for t in &tokens {
                        li {
                            strong { (t.name) } " " code { (t.prefix) "…" } " " (t.role.as_str())
                            " · last used " (t.last_used_at.map(|t| to_rfc3339(t).format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "never".into()))
                            @if t.revoked_at.is_some() { " · revoked" } @else {
                                form.inline data-api=(format!("/api/v1/tokens/{}", t.id)) data-method="DELETE" data-then="reload" data-confirm=(format!("Revoke {}?", t.name)) data-mutates {
                                    button type="submit" { "Revoke" }
                                }
                            }
                        }
                    } }
                    form data-api="/api/v1/tokens" data-method="POST" data-then="token" data-mutates {
                        label for="token-name" { "Name" }
                        input id="token-name" name="name" required;
                        label for="token-role" { "Role" }
                        select id="token-role" name="role" { option value="viewer" { "viewer" } option value="admin" { "admin" } option value="owner" { "owner" } }
                        p.form-error role="alert" aria-live="polite" {}
                        output.secret aria-live="polite" {}
                        button type="submit" { "Create token" }
                    }
                }
                section.card id="audit" {
                    h2 { "Audit log" }
                    @if audit.is_empty() { p.muted { "No entries." } }
                    div.table-wrap { table {
                        thead { tr { th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "What" } th scope="col" { "Target" } } }
                        tbody { @for e in &audit {
                            tr data-audit=(e.id) {
                                td { (to_rfc3339(e.at).format("%Y-%m-%d %H:%M:%S")) }
                                td { (name(&e.actor_kind, &e.actor_id, &serde_json::Value::Null)) }
                                td { (e.action) }
                                td { (name(&e.target_kind, &e.target_id, &e.details)) }
                            }
                        } }
                    } }
                    (pager(q.audit_before.is_some(), older.as_deref()))
                }
            }
        },
    ))
}

/// An actor or target as people know it: "user ada@example.com", "cluster prod-eu-1"; the id
/// only when the thing is gone and nothing else names it.
fn describe(names: &HashMap<(String, String), String>, org_name: &str, kind: &str, id: &str, details: &serde_json::Value) -> Markup {
    let known = |kind: &str, id: &str| names.get(&(kind.to_owned(), id.to_owned())).cloned();
    let detail = |key: &str| details.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let (label, text) = match kind {
        "user" => ("user", known("user", id)),
        "api_token" => ("API token", known("api_token", id).or_else(|| detail("name"))),
        "cluster" => ("cluster", known("cluster", id).or_else(|| detail("name"))),
        "organization" => ("organization", Some(org_name.to_owned())),
        "command" => {
            let on = detail("cluster").map(|c| known("cluster", &c).unwrap_or(c));
            let what = detail("kind").unwrap_or_default();
            ("command", on.map(|c| format!("{what} on {c}")))
        }
        other => (other, None),
    };
    html! {
        (label) " "
        @match text { Some(t) => { strong { (t) } }, None => { code title="no longer exists" { (id) } } }
    }
}

/// Links between pages of the audit log.
fn pager(paged: bool, older: Option<&str>) -> Markup {
    html! {
        @if paged || older.is_some() {
            nav.actions aria-label="Audit log pages" {
                @if paged { a href="/settings#audit" { "Newest entries" } }
                @if let Some(cursor) = older { a href=(format!("/settings?audit_before={cursor}#audit")) rel="next" { "Older entries" } }
            }
        }
    }
}
