//! The OpenAPI document tells the truth, checked cheaply in `cargo test` (`.ci/openapi-check`
//! validates and fuzzes it in depth): parameters are where the path says, every error is a
//! documented problem+json, what the shared extractors refuse is documented on every route
//! that uses them, and requests the schemas allow are accepted.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, Engine, TestApp};

/// Operations whose handlers touch nothing that can fail.
const INFALLIBLE: &[&str] = &["GET /healthz", "GET /metrics"];

struct Operation {
    method: String,
    path: String,
    op: Value,
}

impl Operation {
    fn name(&self) -> String {
        format!("{} {}", self.method.to_uppercase(), self.path)
    }

    fn params_in(&self, location: &str) -> BTreeSet<String> {
        let params = self.op["parameters"].as_array().into_iter().flatten();
        params.filter(|p| p["in"] == location).map(|p| p["name"].as_str().unwrap().to_owned()).collect()
    }

    fn statuses(&self) -> BTreeSet<u16> {
        self.op["responses"].as_object().unwrap().keys().map(|s| s.parse().unwrap()).collect()
    }

    fn is_authenticated(&self) -> bool {
        self.op["security"].as_array().is_some_and(|s| !s.is_empty())
    }
}

async fn document(app: &TestApp) -> (Value, Vec<Operation>) {
    let spec: Value = app.client.get(format!("{}/api/openapi.json", app.base)).send().await.unwrap().json().await.unwrap();
    let mut ops = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ops.push(Operation { method: method.clone(), path: path.clone(), op: op.clone() });
        }
    }
    assert!(ops.len() >= 25, "suspiciously few operations");
    (spec, ops)
}

#[tokio::test]
async fn openapi_parameters_are_where_the_document_says() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let (_, ops) = document(&app).await;
    let mut ids = BTreeSet::new();
    for o in &ops {
        let templated: BTreeSet<String> = o.path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).map(str::to_owned).collect();
        // A query parameter declared `in: path` made the document invalid and clients broken.
        assert_eq!(o.params_in("path"), templated, "{}: path parameters differ from the path's template", o.name());
        let params = o.op["parameters"].as_array().into_iter().flatten();
        for p in params {
            assert!(["path", "query"].contains(&p["in"].as_str().unwrap()), "{}: {p}", o.name());
            assert_eq!(p["required"] == true, p["in"] == "path", "{}: only path parameters are required: {p}", o.name());
        }
        let id = o.op["operationId"].as_str().unwrap().to_owned();
        assert!(ids.insert(id.clone()), "operationId {id} is not unique");
    }
}

#[tokio::test]
async fn openapi_documents_every_error_as_problem_json() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let (spec, ops) = document(&app).await;
    assert!(spec["components"]["schemas"]["Problem"].is_object());
    for o in &ops {
        let name = o.name();
        for (status, response) in o.op["responses"].as_object().unwrap() {
            if status.as_str() >= "400" {
                let want = json!({ "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } });
                assert_eq!(response["content"], want, "{name} {status}: errors are problem+json documents");
            }
        }
        // What the shared extractors refuse, on every route that uses them.
        let statuses = o.statuses();
        let mut expected = BTreeSet::new();
        if o.is_authenticated() {
            expected.insert(401); // Principal
        }
        if o.op.get("requestBody").is_some() {
            expected.extend([400, 413, 415, 422]); // ApiJson
        }
        if !o.params_in("path").is_empty() || !o.params_in("query").is_empty() {
            expected.insert(400); // ApiPath, ApiQuery
        }
        if !INFALLIBLE.contains(&name.as_str()) && name != "GET /readyz" {
            expected.insert(500);
        }
        let missing: Vec<_> = expected.difference(&statuses).collect();
        assert!(missing.is_empty(), "{name} does not document {missing:?} (see src/http/problems.rs)");
        if !INFALLIBLE.contains(&name.as_str()) {
            assert!(statuses.iter().any(|s| *s >= 400), "{name} documents no error");
        }
    }
}

/// The document's `security` is what the server enforces: every operation that declares it
/// answers 401 without credentials, and no other operation does.
#[tokio::test]
async fn openapi_security_is_what_the_server_enforces() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let (_, ops) = document(&app).await;
    for o in &ops {
        let path = o.path.replace("{id}", &uuid::Uuid::now_v7().to_string()).replace("{user_id}", &uuid::Uuid::now_v7().to_string());
        let path = path.replace("{command_id}", &uuid::Uuid::now_v7().to_string());
        let (status, body) = app.call(o.method.to_uppercase().parse().unwrap(), &path, None, None).await;
        if o.is_authenticated() {
            assert_problem(status, &body, 401, "unauthenticated", None);
        } else {
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{} needs credentials but does not document it", o.name());
        }
        let documented = o.statuses().contains(&status.as_u16()) || status.is_success();
        assert!(documented, "{} answered an undocumented {status}: {body}", o.name());
    }
}

/// Requests the schemas allow are accepted, for the shapes the document allows and serde did
/// not: integers written as `30.0` (an integer to JSON Schema) and any base64url cursor.
#[tokio::test]
async fn schema_valid_requests_are_accepted() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let owner = app.owner("ada@example.com").await;
    let (status, body) = app.post("/api/v1/tokens", &owner.access, json!({ "name": "ci", "role": "viewer", "expires_in_days": 30.0 })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app.post("/api/v1/tokens", &owner.access, json!({ "name": "ci", "role": "viewer", "expires_in_days": 30.5 })).await;
    assert_problem(status, &body, 422, "validation", Some("expires_in_days"));

    let cluster = app.create_cluster(&owner, "c1", json!({})).await["cluster"]["id"].as_str().unwrap().to_owned();
    let commands = format!("/api/v1/clusters/{cluster}/commands");
    let (status, body) =
        app.post(&commands, &owner.access, json!({ "kind": "restart-workloads", "params": { "batch_size": 2.0 }, "deadline_secs": 60.0 })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["params"], json!({ "batch_size": 2 }), "the agent gets an integer");

    // "AB" has unused trailing bits set; "A" is no base64url at all (nor by the pattern).
    let (status, body) = app.get("/api/v1/clusters?cursor=AB", &owner.access).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app.get("/api/v1/clusters?cursor=A", &owner.access).await;
    assert_problem(status, &body, 422, "validation", Some("cursor"));
}
