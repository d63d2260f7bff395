//! API conventions: problem+json for every failure, body limits, the OpenAPI document
//! covering every route, and the operational endpoints.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_problem, Engine, TestApp};

async fn raw(app: &TestApp, method: Method, path: &str, token: Option<&str>, content_type: Option<&str>, body: Vec<u8>) -> (StatusCode, Value) {
    let mut req = app.client.request(method, format!("{}{path}", app.base)).body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    assert_eq!(resp.headers()["content-type"], "application/problem+json", "{status}");
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn bad_input_gets_a_problem_never_a_500() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let owner = app.owner("ada@example.com").await;
    let t = Some(owner.access.as_str());
    let json_ct = Some("application/json");
    // method, path, content type, body, status, problem type, field
    type Case<'a> = (Method, &'a str, Option<&'a str>, Vec<u8>, u16, &'a str, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (Method::POST, "/api/v1/clusters", json_ct, b"{\"name\":".to_vec(), 400, "bad-request", None),
        (Method::POST, "/api/v1/clusters", json_ct, b"\xff\xfe".to_vec(), 400, "bad-request", None),
        (Method::POST, "/api/v1/clusters", json_ct, b"{\"name\":\"x\",\"bogus\":1}".to_vec(), 422, "validation", Some("bogus")),
        (Method::POST, "/api/v1/clusters", json_ct, b"{\"name\":42}".to_vec(), 422, "validation", Some("name")),
        (Method::POST, "/api/v1/clusters", json_ct, b"{\"name\":\"x\",\"labels\":{\"a\":1}}".to_vec(), 422, "validation", Some("labels.a")),
        (Method::POST, "/api/v1/clusters", json_ct, b"[]".to_vec(), 422, "validation", Some("body")),
        // A struct written as the array of its fields, which serde would take.
        (Method::PUT, "/api/v1/workload-objectives", json_ct, b" [null, null]".to_vec(), 422, "validation", Some("body")),
        (Method::POST, "/api/v1/clusters", None, b"{\"name\":\"x\"}".to_vec(), 415, "unsupported-media-type", None),
        (Method::POST, "/api/v1/clusters", Some("text/plain"), b"{\"name\":\"x\"}".to_vec(), 415, "unsupported-media-type", None),
        (Method::POST, "/api/v1/clusters", json_ct, vec![b' '; 1024 * 1024 + 1], 413, "payload-too-large", None),
        (Method::GET, "/api/v1/clusters/not-a-uuid", None, vec![], 400, "bad-request", Some("path")),
        (Method::GET, "/api/v1/clusters/%00%ff", None, vec![], 400, "bad-request", Some("path")),
        (Method::GET, "/api/v1/nowhere", None, vec![], 404, "route-not-found", None),
        (Method::PUT, "/api/v1/clusters", None, vec![], 405, "method-not-allowed", None),
    ];
    for (method, path, ct, body, status, kind, field) in cases {
        let (got, problem) = raw(&app, method.clone(), path, t, ct, body).await;
        assert_problem(got, &problem, status, kind, field);
    }
    // Unauthenticated requests too.
    let (got, problem) = raw(&app, Method::GET, "/api/v1/clusters", None, None, vec![]).await;
    assert_problem(got, &problem, 401, "unauthenticated", None);
    // The service is still healthy after all of that.
    assert_eq!(app.client.get(format!("{}/healthz", app.base)).send().await.unwrap().status(), StatusCode::OK);
}

/// Every operation in the document is routed, and every route is in the document.
#[tokio::test]
async fn openapi_document_covers_every_route() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let owner = app.owner("ada@example.com").await;
    let spec: Value = app.client.get(format!("{}/api/openapi.json", app.base)).send().await.unwrap().json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let mut operations = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations.push(format!("{} {path}", method.to_uppercase()));
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path} documents no responses");
            let concrete = ["{id}", "{user_id}", "{command_id}"].iter().fold(path.clone(), |p, param| p.replace(param, &uuid::Uuid::now_v7().to_string()));
            let (status, body) = app.call(method.to_uppercase().parse().unwrap(), &concrete, Some(&owner.access), Some(json!({}))).await;
            assert!(
                !matches!(body["type"].as_str(), Some("/problems/route-not-found" | "/problems/method-not-allowed")),
                "{method} {path} is documented but not routed: {status} {body}"
            );
        }
    }
    for expected in [
        "POST /api/v1/signup",
        "POST /api/v1/login",
        "POST /api/v1/token/refresh",
        "POST /api/v1/logout",
        "GET /api/v1/me",
        "GET /api/v1/members",
        "POST /api/v1/members",
        "PATCH /api/v1/members/{user_id}",
        "DELETE /api/v1/members/{user_id}",
        "GET /api/v1/tokens",
        "POST /api/v1/tokens",
        "DELETE /api/v1/tokens/{id}",
        "GET /api/v1/clusters",
        "POST /api/v1/clusters",
        "GET /api/v1/clusters/{id}",
        "PATCH /api/v1/clusters/{id}",
        "DELETE /api/v1/clusters/{id}",
        "POST /api/v1/clusters/{id}/bootstrap-token",
        "GET /api/v1/clusters/{id}/install.yaml",
        "GET /api/v1/clusters/{id}/inventory",
        "GET /api/v1/clusters/{id}/metrics",
        "GET /api/v1/clusters/{id}/events",
        "POST /api/v1/clusters/{id}/agent/revoke",
        "POST /api/v1/clusters/{id}/commands",
        "GET /api/v1/clusters/{id}/commands",
        "GET /api/v1/clusters/{id}/commands/{command_id}",
        "GET /api/v1/audit",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
    ] {
        assert!(operations.iter().any(|o| o == expected), "{expected} missing from the OpenAPI document");
    }
    // Routes are only ever added through utoipa-axum's `routes!`, which documents them; a
    // plain axum `.route(` in the API would bypass the document. The one exception serves the
    // document. (Dashboard pages, under src/ui, are HTML and not part of the API.)
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http");
    let mut offenders = Vec::new();
    visit(std::path::Path::new(src), &mut |file, text| {
        for (n, line) in text.lines().enumerate() {
            if line.contains(".route(") && !line.contains("OPENAPI_PATH") {
                offenders.push(format!("{}:{}", file.display(), n + 1));
            }
        }
    });
    assert!(offenders.is_empty(), "undocumented routes at {offenders:?}");
}

fn visit(dir: &std::path::Path, f: &mut dyn FnMut(&std::path::Path, &str)) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            visit(&path, f);
        } else if path.extension().is_some_and(|e| e == "rs") {
            f(&path, &std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let owner = app.owner("ada@example.com").await;
    let created = app.create_cluster(&owner, "c1", json!({})).await;
    app.get(&format!("/api/v1/clusters/{}", created["cluster"]["id"].as_str().unwrap()), &owner.access).await;

    let (status, body) = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (status, body) = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ready")));

    let resp = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap();
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = resp.text().await.unwrap();
    for needle in [
        r#"meshfleet_http_requests_total{method="GET",route="/api/v1/clusters/{id}",status="200"} 1"#,
        r#"meshfleet_http_requests_total{method="POST",route="/api/v1/clusters",status="201"} 1"#,
        "# TYPE meshfleet_http_request_duration_seconds histogram",
        r#"meshfleet_http_request_duration_seconds_bucket{method="POST",route="/api/v1/login",le="+Inf"} 1"#,
        r#"meshfleet_db_pool_connections{state="max"} 4"#,
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }

    // Readiness follows the database.
    app.state.db.pool.close().await;
    let (status, body) = app.call(Method::GET, "/readyz", None, None).await;
    assert_problem(status, &body, 503, "unavailable", None);
}
