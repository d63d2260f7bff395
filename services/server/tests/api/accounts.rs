//! Sign-up, log-in, refresh rotation, log-out and login throttling.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{assert_problem, Engine, TestApp, TestDb, PASSWORD};
use crate::on_both_engines;

on_both_engines!(signup_login_and_me, refresh_tokens_rotate_and_reuse_revokes_the_family, logout_ends_the_session);

async fn signup_login_and_me(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (status, body) = app
        .call(Method::POST, "/api/v1/signup", None, Some(json!({ "email": "Ada@Example.com", "password": PASSWORD, "organization": "Acme" })))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["user"]["email"], "ada@example.com");
    assert_eq!(body["organization"]["role"], "owner");

    let (status, body) = app
        .call(Method::POST, "/api/v1/signup", None, Some(json!({ "email": "ada@example.com", "password": PASSWORD, "organization": "Again" })))
        .await;
    assert_problem(status, &body, 409, "email-taken", Some("email"));

    let (status, body) =
        app.call(Method::POST, "/api/v1/signup", None, Some(json!({ "email": "nope", "password": "short", "organization": " " }))).await;
    assert_problem(status, &body, 422, "validation", Some("email"));
    for field in ["password", "organization"] {
        assert_problem(status, &body, 422, "validation", Some(field));
    }

    let login = app.login("ada@example.com").await;
    assert!(login.refresh.starts_with("mfr_"));
    let header = jsonwebtoken::decode_header(&login.access).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert!(header.kid.is_some());
    let (status, me) = app.get("/api/v1/me", &login.access).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["user"]["email"], "ada@example.com");
    assert_eq!(me["organization"]["name"], "Acme");
    assert_eq!(me["organization"]["role"], "owner");

    // Wrong password and unknown account look the same.
    for (email, password) in [("ada@example.com", "wrong password!!"), ("nobody@example.com", PASSWORD)] {
        let (status, body) = app.call(Method::POST, "/api/v1/login", None, Some(json!({ "email": email, "password": password }))).await;
        assert_problem(status, &body, 401, "unauthenticated", None);
        assert_eq!(body["detail"], "wrong e-mail or password");
    }
}

async fn refresh_tokens_rotate_and_reuse_revokes_the_family(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let first = app.owner("ada@example.com").await;
    let refresh = |token: &str| app.call(Method::POST, "/api/v1/token/refresh", None, Some(json!({ "refresh_token": token })));

    let (status, body) = refresh(&first.refresh).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let second_refresh = body["refresh_token"].as_str().unwrap().to_owned();
    let second_access = body["access_token"].as_str().unwrap().to_owned();
    assert_ne!(second_refresh, first.refresh);
    assert_eq!(app.get("/api/v1/me", &second_access).await.0, StatusCode::OK);

    // Replaying the rotated token revokes the whole family, including the newer tokens.
    let (status, body) = refresh(&first.refresh).await;
    assert_problem(status, &body, 401, "unauthenticated", None);
    assert!(body["detail"].as_str().unwrap().contains("reuse"), "{body}");
    assert_eq!(refresh(&second_refresh).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.get("/api/v1/me", &second_access).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.get("/api/v1/me", &first.access).await.0, StatusCode::UNAUTHORIZED);

    // Another login is a separate family and unaffected.
    let other = app.login("ada@example.com").await;
    assert_eq!(refresh(&other.refresh).await.0, StatusCode::OK);
    assert_eq!(refresh("mfr_unknown").await.0, StatusCode::UNAUTHORIZED);
}

async fn logout_ends_the_session(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let login = app.owner("ada@example.com").await;
    let (status, _) = app.call(Method::POST, "/api/v1/logout", Some(&login.access), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/api/v1/me", &login.access).await.0, StatusCode::UNAUTHORIZED);
    let (status, _) = app.call(Method::POST, "/api/v1/token/refresh", None, Some(json!({ "refresh_token": login.refresh }))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn repeated_failures_throttle_even_the_right_password() {
    let db = TestDb::new(Engine::Sqlite).await;
    let app = TestApp::spawn_with(db, |c| {
        c.login_max_failures_per_account = 3;
        c.login_max_failures_per_address = 5;
    })
    .await;
    app.owner("ada@example.com").await;
    let attempt = |email: &'static str, password: &'static str| {
        app.client.post(format!("{}/api/v1/login", app.base)).json(&json!({ "email": email, "password": password })).send()
    };
    for _ in 0..3 {
        assert_eq!(attempt("ada@example.com", "wrong password!!").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    let resp = attempt("ada@example.com", PASSWORD).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=900).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "/problems/too-many-requests");

    // The address limit covers guessing across accounts: 2 more failures reach 5.
    for _ in 0..2 {
        assert_eq!(attempt("someone@example.com", "wrong password!!").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(attempt("other@example.com", "wrong password!!").await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    let metrics = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("meshfleet_logins_throttled_total 2"), "{metrics}");
}
