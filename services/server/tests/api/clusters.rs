//! Clusters: create, validate, list with cursors/selectors/status, relabel, delete, bootstrap
//! tokens, and the install manifest.

use k8s_openapi::api::core::v1::Secret;
use meshfleet_server::secrets::token_hash;
use meshfleet_server::store;
use reqwest::{Method, StatusCode};
use serde::Deserialize as _;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, Engine, TestApp};
use crate::on_both_engines;

on_both_engines!(
    cluster_lifecycle_and_validation,
    list_pages_and_selects,
    install_manifest_carries_a_working_bootstrap_token,
    listed_clusters_are_exactly_what_get_shows
);

/// (name, labels, stored status, last seen, agent version)
type Case<'a> = (&'a str, Value, &'a str, Option<i64>, Option<&'a str>);

/// Listed clusters are exactly what `GET /api/v1/clusters/{id}` shows, whatever the status,
/// times and labels, and the status filter (SQL, from `domain::liveness`) agrees with the
/// status shown (Rust, the same rule).
async fn listed_clusters_are_exactly_what_get_shows(engine: Engine) {
    let db = crate::helpers::TestDb::new(engine).await;
    let app = TestApp::spawn_with(db, |c| c.read_cache = std::time::Duration::ZERO).await;
    let owner = app.owner("ada@example.com").await;
    let now = app.state.clock.now_ms();
    let cases: [Case; 6] = [
        ("a-pending", json!({}), "pending", None, None),
        ("b-connected", json!({ "env": "prod", "team.example.com/owner": "ops" }), "connected", Some(now - 1_000), Some("0.1.0")),
        ("c-whole-second", json!({ "tier": "web" }), "connected", Some((now / 1000 - 5) * 1000), Some("1.2.3 \"quoted\" \\ back\u{1}")),
        ("d-stale", json!({}), "connected", Some(now - 40_007), Some("ünïcødé")),
        ("e-gone", json!({}), "connected", Some(now - 400_000), None),
        ("f-disconnected", json!({}), "disconnected", Some(now - 5), Some("0.0.9")),
    ];
    for (name, labels, status, seen, version) in &cases {
        let id = app.create_cluster(&owner, name, labels.clone()).await["cluster"]["id"].as_str().unwrap().to_owned();
        sqlx::query("UPDATE clusters SET status = $1, last_seen_at = $2, agent_version = $3, kubernetes_version = $3, updated_at = $4 WHERE id = $5")
            .bind(*status)
            .bind(*seen)
            .bind(version.map(str::to_owned))
            .bind(now + 123)
            .bind(&id)
            .execute(&app.state.db.pool)
            .await
            .unwrap();
    }
    let (status, page) = app.get("/api/v1/clusters?limit=4", &owner.access).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (_, rest) = app.get(&format!("/api/v1/clusters?limit=4&cursor={}", page["next_cursor"].as_str().unwrap()), &owner.access).await;
    assert_eq!(rest["next_cursor"], Value::Null, "{rest}");
    let listed: Vec<Value> = page["items"].as_array().unwrap().iter().chain(rest["items"].as_array().unwrap()).cloned().collect();
    assert_eq!(listed.len(), cases.len());
    let statuses: Vec<&str> = listed.iter().map(|c| c["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["pending", "connected", "connected", "stale", "disconnected", "disconnected"]);
    for item in &listed {
        let (_, mut one) = app.get(&format!("/api/v1/clusters/{}", item["id"].as_str().unwrap()), &owner.access).await;
        one.as_object_mut().unwrap().remove("throttled");
        assert_eq!(item, &one);
    }
    // The status filter follows the same rule.
    for (wanted, names) in
        [("stale", vec!["d-stale"]), ("disconnected", vec!["e-gone", "f-disconnected"]), ("connected", vec!["b-connected", "c-whole-second"])]
    {
        let (_, page) = app.get(&format!("/api/v1/clusters?status={wanted}"), &owner.access).await;
        let got: Vec<&str> = page["items"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(got, names, "{wanted}");
    }
}

async fn cluster_lifecycle_and_validation(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let created = app.create_cluster(&owner, "prod-eu-1", json!({ "env": "prod", "region": "eu" })).await;
    let id = created["cluster"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["cluster"]["status"], "pending");
    assert!(created["bootstrap_token"]["token"].as_str().unwrap().starts_with("mfb_"));

    let (status, body) = app.post("/api/v1/clusters", &owner.access, json!({ "name": "prod-eu-1" })).await;
    assert_problem(status, &body, 409, "name-taken", Some("name"));
    for bad in ["Prod", "-x", "a_b", "", &"x".repeat(64)] {
        let (status, body) = app.post("/api/v1/clusters", &owner.access, json!({ "name": bad })).await;
        assert_problem(status, &body, 422, "validation", Some("name"));
    }
    let (status, body) = app.post("/api/v1/clusters", &owner.access, json!({ "name": "ok", "labels": { "bad key!": "v" } })).await;
    assert_problem(status, &body, 422, "validation", Some("labels"));

    let path = format!("/api/v1/clusters/{id}");
    let (status, got) = app.get(&path, &owner.access).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["labels"], json!({ "env": "prod", "region": "eu" }));

    let (status, updated) = app.call(Method::PATCH, &path, Some(&owner.access), Some(json!({ "labels": { "env": "staging" } }))).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["labels"], json!({ "env": "staging" }));
    let (_, page) = app.get("/api/v1/clusters?selector=region", &owner.access).await;
    assert_eq!(page["items"], json!([]), "stale label still selectable");

    assert_eq!(app.call(Method::DELETE, &path, Some(&owner.access), None).await.0, StatusCode::NO_CONTENT);
    let (status, body) = app.get(&path, &owner.access).await;
    assert_problem(status, &body, 404, "not-found", None);
    assert_eq!(app.call(Method::DELETE, &path, Some(&owner.access), None).await.0, StatusCode::NOT_FOUND);

    let (_, audit) = app.get("/api/v1/audit", &owner.access).await;
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for action in ["cluster.create", "cluster.update", "cluster.delete", "cluster.bootstrap_token.issue"] {
        assert!(actions.contains(&action), "{action} missing from {actions:?}");
    }
}

fn names(page: &Value) -> Vec<String> {
    page["items"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_owned()).collect()
}

async fn list_pages_and_selects(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let fleet = [
        ("a-prod-web", json!({ "env": "prod", "tier": "web" })),
        ("b-prod-api", json!({ "env": "prod", "tier": "api" })),
        ("c-prod-db", json!({ "env": "prod", "tier": "db", "legacy": "true" })),
        ("d-dev-web", json!({ "env": "dev", "tier": "web" })),
        ("e-dev", json!({ "env": "dev" })),
        ("f-unlabelled", json!({})),
        ("g-staging", json!({ "env": "staging", "tier": "api" })),
    ];
    for (name, labels) in &fleet {
        app.create_cluster(&owner, name, labels.clone()).await;
    }

    // Pages of 3 follow the cursor to the end, in order, with nothing missed or repeated.
    let mut seen = Vec::new();
    let mut path = "/api/v1/clusters?limit=3".to_owned();
    loop {
        let (status, page) = app.get(&path, &owner.access).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(names(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/clusters?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, fleet.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>());

    for (selector, want) in [
        ("env=prod", vec!["a-prod-web", "b-prod-api", "c-prod-db"]),
        ("env!=prod", vec!["d-dev-web", "e-dev", "f-unlabelled", "g-staging"]),
        ("tier in (web, api)", vec!["a-prod-web", "b-prod-api", "d-dev-web", "g-staging"]),
        ("env=prod,tier notin (web),!legacy", vec!["b-prod-api"]),
        ("legacy", vec!["c-prod-db"]),
        ("!tier,env", vec!["e-dev"]),
    ] {
        let q: String = url_encode(selector);
        let (status, page) = app.get(&format!("/api/v1/clusters?selector={q}"), &owner.access).await;
        assert_eq!(status, StatusCode::OK, "{selector}: {page}");
        assert_eq!(names(&page), want, "selector {selector}");
    }
    let (_, page) = app.get("/api/v1/clusters?status=pending&limit=500", &owner.access).await;
    assert_eq!(names(&page).len(), fleet.len());
    let (_, page) = app.get("/api/v1/clusters?status=connected", &owner.access).await;
    assert!(names(&page).is_empty());

    for (query, status, kind, field) in [
        ("selector=env%20in%20(", 422, "validation", "selector"),
        ("cursor=%%%", 422, "validation", "cursor"),
        ("cursor=bm90LWEtY3Vyc29y!", 422, "validation", "cursor"),
        ("limit=0", 422, "validation", "limit"),
        ("limit=501", 422, "validation", "limit"),
        ("limit=many", 400, "bad-request", "query"),
        ("status=bogus", 400, "bad-request", "query"),
        ("unknown=1", 400, "bad-request", "query"),
    ] {
        let (got, body) = app.get(&format!("/api/v1/clusters?{query}"), &owner.access).await;
        assert_problem(got, &body, status, kind, Some(field));
    }
}

fn url_encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

async fn install_manifest_carries_a_working_bootstrap_token(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let viewer = app.member(&owner, "viewer@example.com", "viewer").await;
    let created = app.create_cluster(&owner, "prod-eu-1", json!({})).await;
    let id = created["cluster"]["id"].as_str().unwrap();
    let first_token = created["bootstrap_token"]["token"].as_str().unwrap().to_owned();

    let path = format!("/api/v1/clusters/{id}/install.yaml");
    // Meshed namespaces are checked before a token is issued: a refused request spends nothing.
    for bad in ["Payments", "shop,-x", &["n"; 101].iter().enumerate().map(|(i, n)| format!("{n}{i}")).collect::<Vec<_>>().join(",")] {
        let (status, body) = app.get(&format!("{path}?meshed_namespaces={bad}"), &owner.access).await;
        assert_problem(status, &body, 422, "validation", Some("meshed_namespaces"));
    }
    let mut conn = app.state.db.pool.acquire().await.unwrap();
    let state = store::clusters::bootstrap_token_state(&mut conn, &token_hash(&first_token), app.state.clock.now_ms()).await.unwrap();
    assert!(matches!(state, store::clusters::TokenState::Valid), "the first token survived the refused requests");
    drop(conn);

    // The manifest CI validates has the restart Role of each meshed namespace.
    let resp = app.client.get(format!("{}{path}?meshed_namespaces=shop,payments", app.base)).bearer_auth(&owner.access).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/yaml");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let yaml = resp.text().await.unwrap();
    save_artifact("install.yaml", &yaml);

    let secret: Secret = serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|doc| serde_yaml_ng::Value::deserialize(doc).unwrap())
        .find(|doc| doc["kind"] == "Secret")
        .map(|doc| serde_yaml_ng::from_value(doc).unwrap())
        .expect("the manifest has a Secret");
    let restart_roles: Vec<(String, String)> = serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|doc| serde_yaml_ng::Value::deserialize(doc).unwrap())
        .filter(|doc| doc["kind"] == "Role" && doc["metadata"]["name"] == "meshfleet-agent-restart")
        .map(|doc| (doc["metadata"]["namespace"].as_str().unwrap().to_owned(), doc["rules"][0]["verbs"][0].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(restart_roles, [("payments".to_owned(), "patch".to_owned()), ("shop".to_owned(), "patch".to_owned())]);
    let data = secret.string_data.unwrap();
    assert_eq!(data["MESHFLEET_CLUSTER_ID"], id);
    let token = data["MESHFLEET_BOOTSTRAP_TOKEN"].clone();
    assert!(token.starts_with("mfb_") && token != first_token);

    // The manifest's token works exactly once; the earlier one was retired by the re-issue.
    let mut conn = app.state.db.pool.acquire().await.unwrap();
    let now = app.state.clock.now_ms();
    assert_eq!(store::clusters::consume_bootstrap_token(&mut conn, &token_hash(&first_token), now).await.unwrap(), None);
    let (_, cluster) = store::clusters::consume_bootstrap_token(&mut conn, &token_hash(&token), now).await.unwrap().expect("token valid");
    assert_eq!(cluster.to_string(), id);
    assert_eq!(store::clusters::consume_bootstrap_token(&mut conn, &token_hash(&token), now).await.unwrap(), None);

    // Re-issuing through the API, and the one-hour expiry.
    let (status, reissued) = app.post(&format!("/api/v1/clusters/{id}/bootstrap-token"), &owner.access, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{reissued}");
    let later = app.state.clock.now_ms() + 3600 * 1000 + 1;
    let reissued = token_hash(reissued["token"].as_str().unwrap());
    assert_eq!(store::clusters::consume_bootstrap_token(&mut conn, &reissued, later).await.unwrap(), None);

    // Viewers cannot obtain a bootstrap token, not even through the manifest.
    assert_eq!(app.get(&path, &viewer.access).await.0, StatusCode::FORBIDDEN);
}

/// Writes a file CI inspects after the tests (the install manifest goes through an
/// independent Kubernetes schema validator).
fn save_artifact(name: &str, contents: &str) {
    let dir =
        std::env::var_os("MESHFLEET_TEST_ARTIFACTS").map(std::path::PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("meshfleet-test-artifacts"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), contents).unwrap();
}
