//! The read caches (`meshfleet_server::cache`) never hide a change: with entries kept for a
//! minute, a change made through the API shows at once on the same replica and, through
//! PostgreSQL notifications, on another replica; a revoked credential is refused at once.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use crate::helpers::{postgres_url, Engine, TestApp, TestDb, PASSWORD};
use crate::on_both_engines;
use crate::process::server;

/// Long enough that only invalidation, never expiry, can explain a fresh answer.
const LONG_MS: &str = "60000";

fn names(page: &Value) -> Vec<&str> {
    page["items"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect()
}

async fn changes_show_at_once_despite_long_lived_caches(engine: Engine) {
    let app = TestApp::spawn_with(TestDb::new(engine).await, |c| c.read_cache = std::time::Duration::from_millis(LONG_MS.parse().unwrap())).await;
    let owner = app.owner("ada@example.com").await;
    let viewer = app.member(&owner, "bob@example.com", "viewer").await;
    let list = |token: String| {
        let app = &app;
        async move {
            let (status, page) = app.get("/api/v1/clusters?limit=10", &token).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            page
        }
    };

    // Each list below would be answered from the cache if a change did not drop it.
    assert!(names(&list(viewer.access.clone()).await).is_empty());
    let id = app.create_cluster(&owner, "c1", json!({ "env": "dev" })).await["cluster"]["id"].as_str().unwrap().to_owned();
    assert_eq!(names(&list(viewer.access.clone()).await), ["c1"]);
    let (status, _) = app.call(Method::PATCH, &format!("/api/v1/clusters/{id}"), Some(&owner.access), Some(json!({ "labels": { "env": "prod" } }))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list(viewer.access.clone()).await["items"][0]["labels"]["env"], "prod");
    assert_eq!(app.call(Method::DELETE, &format!("/api/v1/clusters/{id}"), Some(&owner.access), None).await.0, StatusCode::NO_CONTENT);
    assert!(names(&list(viewer.access.clone()).await).is_empty());

    // A demoted or removed member, a revoked API token and a logged-out session lose access at once.
    let viewer_id = app.get("/api/v1/me", &viewer.access).await.1["user"]["id"].as_str().unwrap().to_owned();
    let admin = app.member(&owner, "cy@example.com", "admin").await;
    assert_eq!(app.post("/api/v1/clusters", &admin.access, json!({ "name": "c2" })).await.0, StatusCode::CREATED);
    let admin_id = app.get("/api/v1/me", &admin.access).await.1["user"]["id"].as_str().unwrap().to_owned();
    let demote = json!({ "role": "viewer" });
    assert_eq!(app.call(Method::PATCH, &format!("/api/v1/members/{admin_id}"), Some(&owner.access), Some(demote)).await.0, StatusCode::OK);
    assert_eq!(app.post("/api/v1/clusters", &admin.access, json!({ "name": "c3" })).await.0, StatusCode::FORBIDDEN);

    assert_eq!(app.call(Method::DELETE, &format!("/api/v1/members/{viewer_id}"), Some(&owner.access), None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/api/v1/clusters", &viewer.access).await.0, StatusCode::UNAUTHORIZED);

    let (_, created) = app.post("/api/v1/tokens", &owner.access, json!({ "name": "ci", "role": "viewer", "expires_in_days": 7 })).await;
    let secret = created["token"].as_str().unwrap().to_owned();
    assert_eq!(app.get("/api/v1/clusters", &secret).await.0, StatusCode::OK);
    let revoke = format!("/api/v1/tokens/{}", created["id"].as_str().unwrap());
    assert_eq!(app.call(Method::DELETE, &revoke, Some(&owner.access), None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/api/v1/clusters", &secret).await.0, StatusCode::UNAUTHORIZED);

    assert_eq!(app.call(Method::POST, "/api/v1/logout", Some(&owner.access), None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/api/v1/clusters", &owner.access).await.0, StatusCode::UNAUTHORIZED);
}

on_both_engines!(changes_show_at_once_despite_long_lived_caches);

/// GETs `path` from `base` until `done` holds for (status, body), for at most a second.
async fn within_a_second(http: &reqwest::Client, base: &str, path: &str, token: &str, done: impl Fn(u16, &Value) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let resp = http.get(format!("{base}{path}")).bearer_auth(token).send().await.unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if done(status, &body) {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(1), "{path} on the other replica still answers {status} {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Signs up an owner through the replica at `base`, logs in and returns the access token.
async fn signed_up_owner(base: &str) -> String {
    let password = SecretString::from(PASSWORD.to_owned());
    let owner = meshfleet_client::Client::signup(base, "ada@example.com", &password, "Acme").await.unwrap();
    owner.token().expose_secret().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replica_drops_its_cached_pages_and_principals_when_told() {
    if postgres_url().is_none() {
        return;
    }
    let db = TestDb::new(Engine::Postgres).await;
    let env = [("MESHFLEET_READ_CACHE_MS", LONG_MS)];
    let (a, b) = server().two_replicas(&db, &env);
    let (a, b) = (a.url(), b.url());
    let http = reqwest::Client::new();
    let token = &signed_up_owner(&a).await;

    // Replica B caches the empty page and the principal; A creates a cluster, then logs out.
    within_a_second(&http, &b, "/api/v1/clusters", token, |s, p| s == 200 && names(p).is_empty()).await;
    let created = http.post(format!("{a}/api/v1/clusters")).bearer_auth(token).json(&json!({ "name": "c1" })).send().await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    within_a_second(&http, &b, "/api/v1/clusters", token, |s, p| s == 200 && names(p) == ["c1"]).await;
    assert_eq!(http.post(format!("{a}/api/v1/logout")).bearer_auth(token).send().await.unwrap().status(), StatusCode::NO_CONTENT);
    within_a_second(&http, &b, "/api/v1/clusters", token, |s, _| s == 401).await;
}

/// A removed member's API token, cached as a principal by another replica, is refused there
/// within a second (the NOTIFY of the removal, not the cache's minute-long expiry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replica_refuses_a_removed_members_token() {
    if postgres_url().is_none() {
        return;
    }
    let db = TestDb::new(Engine::Postgres).await;
    let env = [("MESHFLEET_READ_CACHE_MS", LONG_MS)];
    let (a, b) = server().two_replicas(&db, &env);
    let (a, b) = (a.url(), b.url());
    let http = reqwest::Client::new();
    let post = |path: &str, token: Option<&str>, body: Value| {
        let mut req = http.post(format!("{a}{path}")).json(&body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        async move {
            let resp = req.send().await.unwrap();
            assert!(resp.status().is_success(), "{}", resp.status());
            resp.json::<Value>().await.unwrap()
        }
    };
    for email in ["ada@example.com", "bob@example.com"] {
        post("/api/v1/signup", None, json!({ "email": email, "password": PASSWORD, "organization": email })).await;
    }
    let owner = post("/api/v1/login", None, json!({ "email": "ada@example.com", "password": PASSWORD })).await;
    let (owner, org) = (owner["access_token"].as_str().unwrap(), owner["organization_id"].clone());
    let member = post("/api/v1/members", Some(owner), json!({ "email": "bob@example.com", "role": "admin" })).await;
    let bob = post("/api/v1/login", None, json!({ "email": "bob@example.com", "password": PASSWORD, "organization_id": org })).await;
    let token = post("/api/v1/tokens", Some(bob["access_token"].as_str().unwrap()), json!({ "name": "ci", "role": "admin" })).await;
    let token = token["token"].as_str().unwrap();

    // Replica B caches the token's principal; A removes its member.
    within_a_second(&http, &b, "/api/v1/members", token, |s, _| s == 200).await;
    let removed = http.delete(format!("{a}/api/v1/members/{}", member["user_id"].as_str().unwrap())).bearer_auth(owner).send().await.unwrap();
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    within_a_second(&http, &b, "/api/v1/members", token, |s, _| s == 401).await;
}

/// A replica started with the api role alone (no gateway) still hears the other replicas'
/// notifications: a logout made elsewhere is refused there within a second, not after
/// `read_cache_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_only_replica_refuses_a_token_logged_out_elsewhere() {
    if postgres_url().is_none() {
        return;
    }
    let db = TestDb::new(Engine::Postgres).await;
    let sealing_key = meshfleet_server::secrets::Sealer::generate_key();
    let a = server().replica(&db, &sealing_key, "a", &[("MESHFLEET_READ_CACHE_MS", LONG_MS)]);
    let b = server().replica(&db, &sealing_key, "b", &[("MESHFLEET_READ_CACHE_MS", LONG_MS), ("MESHFLEET_ROLES", "api")]);
    assert!(b.gateway.is_none(), "replica b runs without the gateway role");
    let (a, b) = (a.url(), b.url());
    let http = reqwest::Client::new();
    let token = &signed_up_owner(&a).await;

    // Replica B caches the principal; A logs out.
    within_a_second(&http, &b, "/api/v1/clusters", token, |s, _| s == 200).await;
    assert_eq!(http.post(format!("{a}/api/v1/logout")).bearer_auth(token).send().await.unwrap().status(), StatusCode::NO_CONTENT);
    within_a_second(&http, &b, "/api/v1/clusters", token, |s, _| s == 401).await;
}
