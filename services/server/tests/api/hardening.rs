//! HTTP hardening: a request another site can make a browser send (the session cookie alone)
//! never mints a bootstrap token; every response carries the security headers; a malformed
//! query, path or body gets the service's own error, on the API and on the dashboard.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, Engine, TestApp};

crate::on_both_engines!(the_session_cookie_alone_cannot_mint_a_bootstrap_token);

async fn the_session_cookie_alone_cannot_mint_a_bootstrap_token(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let created = app.create_cluster(&owner, "prod-eu-1", json!({})).await;
    let id = created["cluster"]["id"].as_str().unwrap();
    let first_token = created["bootstrap_token"]["token"].as_str().unwrap().to_owned();
    let session = app.dashboard_session("ada@example.com").await;
    let url = format!("{}/api/v1/clusters/{id}/install.yaml", app.base);
    let send = |method: Method, csrf: Option<&str>| {
        let mut req = app.client.request(method, &url).header("cookie", &session.cookie);
        if let Some(t) = csrf {
            req = req.header("x-csrf-token", t);
        }
        req.send()
    };

    // What a cross-site link or redirect makes the browser send: the cookie, nothing else.
    for (method, csrf) in [(Method::GET, None), (Method::GET, Some("forged")), (Method::POST, None)] {
        let resp = send(method.clone(), csrf).await.unwrap();
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let status = resp.status();
        assert_problem(status, &resp.json().await.unwrap(), 403, "forbidden", None);
    }
    // ... and the install in progress still has its token.
    crate::gateway::register(&app, &first_token).await.expect("the first bootstrap token was not retired");

    // The dashboard's own request (a POST with the CSRF token) gets the manifest, and so does
    // a GET that carries the token; bearer GETs (the README's curl) work as before.
    for method in [Method::POST, Method::GET] {
        let resp = send(method.clone(), Some(&session.csrf)).await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{method}");
        assert_eq!(resp.headers()["content-type"], "application/yaml");
        assert!(resp.text().await.unwrap().contains("MESHFLEET_BOOTSTRAP_TOKEN"));
    }
    let resp = app.client.get(&url).bearer_auth(&owner.access).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.text().await.unwrap().contains("MESHFLEET_BOOTSTRAP_TOKEN"));
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let owner = app.owner("ada@example.com").await;
    let cluster = app.create_cluster(&owner, "prod-eu-1", json!({})).await["cluster"]["id"].as_str().unwrap().to_owned();
    let session = app.dashboard_session("ada@example.com").await;
    let pages =
        ["/login", "/signup", "/fleet", "/alerts", "/channels", "/settings", &format!("/clusters/{cluster}"), "/clusters/not-an-id", "/ui/live", "/ui/app.js"];
    let api = ["/api/v1/clusters", "/api/v1/nowhere", "/healthz"];
    for path in pages.iter().chain(api.iter()) {
        let resp = app.client.get(format!("{}{path}", app.base)).header("cookie", &session.cookie).send().await.unwrap();
        let h = resp.headers();
        let csp = h.get("content-security-policy").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"), "{path}: CSP {csp:?}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "same-origin", "{path}");
    }
}

#[tokio::test]
async fn malformed_requests_get_the_services_own_errors() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let owner = app.owner("ada@example.com").await;
    let cluster = app.create_cluster(&owner, "prod-eu-1", json!({})).await["cluster"]["id"].as_str().unwrap().to_owned();
    let session = app.dashboard_session("ada@example.com").await;

    // The dashboard's live endpoint without a view, or with a bad id: a page that says what is
    // wrong, not axum's plain-text message.
    for (query, words) in [("", "view"), ("?view=cluster&id=nope", "id"), ("?view=nope", "unknown live view")] {
        let resp = app.client.get(format!("{}/ui/live{query}", app.base)).header("cookie", &session.cookie).send().await.unwrap();
        let status = resp.status().as_u16();
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        let body = resp.text().await.unwrap();
        assert!(matches!(status, 400 | 422), "{query}: {status}");
        assert!(content_type.starts_with("text/html"), "{query}: {content_type}: {body}");
        assert!(body.contains("<h1>") && body.contains(words) && body.contains("Back to the fleet"), "{query}: {body}");
    }

    // The API: query strings, paths and bodies of the wrong shape are problem documents.
    let cases: Vec<(Method, String, Option<Value>, u16, &str)> = vec![
        (Method::GET, "/api/v1/audit?limit=many".into(), None, 400, "bad-request"),
        (Method::GET, format!("/api/v1/clusters/{cluster}/metrics?minutes=lots"), None, 400, "bad-request"),
        (Method::GET, format!("/api/v1/clusters/{cluster}/events?limit=-1"), None, 400, "bad-request"),
        (Method::PATCH, format!("/api/v1/clusters/{cluster}"), Some(json!({ "labels": "env=prod" })), 422, "validation"),
    ];
    for (method, path, body, status, kind) in cases {
        let (got, problem) = app.call(method.clone(), &path, Some(&owner.access), body).await;
        assert_problem(got, &problem, status, kind, None);
        assert!(!problem["detail"].as_str().unwrap_or("").is_empty(), "{method} {path}: {problem}");
    }
}
