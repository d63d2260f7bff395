//! Settings: members and roles, API tokens, and the audit log.

use axum::extract::State;
use maud::html;

use super::{layout, page_error, PageResult, Viewer};
use crate::app::AppState;
use crate::db::to_rfc3339;
use crate::domain::Role;
use crate::store;

pub async fn page(State(state): State<AppState>, viewer: Viewer) -> PageResult {
    let org = viewer.principal.org_id;
    let admin = viewer.can_change();
    let mut conn = state.db.pool.acquire().await.map_err(page_error)?;
    let members = store::accounts::list_members(&mut conn, org).await.map_err(page_error)?;
    let (tokens, audit) = if admin {
        (store::api_tokens::list(&mut conn, org).await.map_err(page_error)?, store::audit::list(&mut conn, org, None, 50).await.map_err(page_error)?)
    } else {
        (vec![], vec![])
    };
    Ok(layout("Settings", Some(&viewer), html! {
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
                            form.inline data-api=(format!("/api/v1/members/{}", m.user_id)) data-method="DELETE" data-then="reload" data-confirm=(format!("Remove {}?", m.email)) data-mutates {
                                button type="submit" { "Remove" }
                            }
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
            section.card {
                h2 { "Audit log" }
                div.table-wrap { table {
                    thead { tr { th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "What" } th scope="col" { "Target" } } }
                    tbody { @for e in &audit {
                        tr { td { (to_rfc3339(e.at).format("%Y-%m-%d %H:%M:%S")) } td { (e.actor_kind) " " (e.actor_id) } td { (e.action) } td { (e.target_kind) " " (e.target_id) } }
                    } }
                } }
            }
        }
    }))
}
