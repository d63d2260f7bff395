//! Members and roles: who may change whom, and the organization always keeps an owner.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_problem, Engine, TestApp};
use crate::on_both_engines;

on_both_engines!(members_roles_and_the_last_owner);

async fn user_id(app: &TestApp, token: &str) -> String {
    app.get("/api/v1/me", token).await.1["user"]["id"].as_str().unwrap().to_owned()
}

async fn members_roles_and_the_last_owner(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("owner@example.com").await;
    let owner_id = user_id(&app, &owner.access).await;
    let admin = app.member(&owner, "admin@example.com", "admin").await;
    let admin_id = user_id(&app, &admin.access).await;
    let viewer = app.member(&owner, "viewer@example.com", "viewer").await;
    let viewer_id = user_id(&app, &viewer.access).await;

    let (status, members) = app.get("/api/v1/members", &viewer.access).await;
    assert_eq!(status, StatusCode::OK);
    let roles: Vec<(&str, &str)> = members.as_array().unwrap().iter().map(|m| (m["email"].as_str().unwrap(), m["role"].as_str().unwrap())).collect();
    assert_eq!(roles, [("owner@example.com", "owner"), ("admin@example.com", "admin"), ("viewer@example.com", "viewer")]);

    // Adding: unknown e-mail, duplicate.
    let (status, body) = app.post("/api/v1/members", &owner.access, json!({ "email": "ghost@example.com", "role": "viewer" })).await;
    assert_problem(status, &body, 422, "validation", Some("email"));
    let (status, body) = app.post("/api/v1/members", &owner.access, json!({ "email": "viewer@example.com", "role": "viewer" })).await;
    assert_problem(status, &body, 409, "already-member", Some("email"));

    // Admins manage non-owners but cannot grant or touch ownership.
    let api = &app;
    let patch = |token: &str, id: &str, role: &str| {
        let (token, path) = (token.to_owned(), format!("/api/v1/members/{id}"));
        let body: Value = json!({ "role": role });
        async move { api.call(Method::PATCH, &path, Some(&token), Some(body)).await }
    };
    let (status, body) = patch(&admin.access, &viewer_id, "admin").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["role"], "admin");
    assert_eq!(patch(&admin.access, &viewer_id, "owner").await.0, StatusCode::FORBIDDEN);
    assert_eq!(patch(&admin.access, &owner_id, "viewer").await.0, StatusCode::FORBIDDEN);
    let (status, _) = app.call(Method::DELETE, &format!("/api/v1/members/{owner_id}"), Some(&admin.access), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The last owner can be neither demoted nor removed.
    let (status, body) = patch(&owner.access, &owner_id, "admin").await;
    assert_problem(status, &body, 409, "last-owner", Some("role"));
    let (status, body) = app.call(Method::DELETE, &format!("/api/v1/members/{owner_id}"), Some(&owner.access), None).await;
    assert_problem(status, &body, 409, "last-owner", None);

    // With a second owner, the first may step down; role changes apply to live tokens at once.
    assert_eq!(patch(&owner.access, &admin_id, "owner").await.0, StatusCode::OK);
    assert_eq!(app.get("/api/v1/me", &admin.access).await.1["organization"]["role"], "owner");
    assert_eq!(patch(&admin.access, &owner_id, "viewer").await.0, StatusCode::OK);
    assert_eq!(app.post("/api/v1/clusters", &owner.access, json!({ "name": "c1" })).await.0, StatusCode::FORBIDDEN);

    // A removed member's access token stops working immediately.
    let (status, _) = app.call(Method::DELETE, &format!("/api/v1/members/{viewer_id}"), Some(&admin.access), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/api/v1/me", &viewer.access).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.call(Method::DELETE, &format!("/api/v1/members/{viewer_id}"), Some(&admin.access), None).await.0, StatusCode::NOT_FOUND);

    let (_, audit) = app.get("/api/v1/audit", &admin.access).await;
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for action in ["member.add", "member.update", "member.remove"] {
        assert!(actions.contains(&action), "{action} missing from {actions:?}");
    }
}
