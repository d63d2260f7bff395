//! Sign-up, log-in, refresh rotation, log-out and login throttling.

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{assert_problem, postgres_url, Engine, TestApp, TestDb, PASSWORD};
use crate::on_both_engines;
use crate::process::server;

on_both_engines!(
    signup_login_and_me,
    refresh_tokens_rotate_and_reuse_revokes_the_family,
    logout_ends_the_session,
    a_parallel_burst_of_wrong_passwords_is_limited_like_a_sequence,
    the_right_password_inside_a_burst_waits_unless_it_came_first,
);

async fn signup_login_and_me(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (status, body) =
        app.call(Method::POST, "/api/v1/signup", None, Some(json!({ "email": "Ada@Example.com", "password": PASSWORD, "organization": "Acme" }))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["user"]["email"], "ada@example.com");
    assert_eq!(body["organization"]["role"], "owner");

    let (status, body) =
        app.call(Method::POST, "/api/v1/signup", None, Some(json!({ "email": "ada@example.com", "password": PASSWORD, "organization": "Again" }))).await;
    assert_problem(status, &body, 409, "email-taken", Some("email"));

    let (status, body) = app.call(Method::POST, "/api/v1/signup", None, Some(json!({ "email": "nope", "password": "short", "organization": " " }))).await;
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

/// POSTs one log-in per password to `bases` in turn, all at once; the statuses in order.
/// A 429 must say when to come back.
async fn login_burst(http: &reqwest::Client, bases: &[String], email: &str, passwords: &[&str]) -> Vec<StatusCode> {
    let attempts = passwords.iter().enumerate().map(|(i, password)| {
        let url = format!("{}/api/v1/login", bases[i % bases.len()]);
        async move {
            let resp = http.post(url).json(&json!({ "email": email, "password": password })).send().await.unwrap();
            if resp.status() == StatusCode::TOO_MANY_REQUESTS {
                let retry_after: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=900).contains(&retry_after), "{retry_after}");
            }
            resp.status()
        }
    });
    join_all(attempts).await
}

fn count(statuses: &[StatusCode], status: StatusCode) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// An app whose address limit stays out of the way of the account limit (5).
async fn throttled_app(engine: Engine) -> TestApp {
    TestApp::spawn_with(TestDb::new(engine).await, |c| c.login_max_failures_per_address = 1000).await
}

async fn a_parallel_burst_of_wrong_passwords_is_limited_like_a_sequence(engine: Engine) {
    let app = throttled_app(engine).await;
    app.owner("ada@example.com").await;
    let statuses = login_burst(&app.client, std::slice::from_ref(&app.base), "ada@example.com", &["wrong password!!"; 40]).await;
    assert_eq!(count(&statuses, StatusCode::UNAUTHORIZED), 5, "{statuses:?}");
    assert_eq!(count(&statuses, StatusCode::TOO_MANY_REQUESTS), 35, "{statuses:?}");
    let (status, _) = app.call(Method::POST, "/api/v1/login", None, Some(json!({ "email": "ada@example.com", "password": PASSWORD }))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "the right password waits too");
}

async fn the_right_password_inside_a_burst_waits_unless_it_came_first(engine: Engine) {
    let app = throttled_app(engine).await;
    app.owner("ada@example.com").await;
    let mut passwords = vec!["wrong password!!"; 30];
    passwords.insert(15, PASSWORD);
    let statuses = login_burst(&app.client, std::slice::from_ref(&app.base), "ada@example.com", &passwords).await;
    let right = statuses[15];
    // Only the first five attempts are checked; the right one, if among them, takes back its
    // count, which at most one later guess can use.
    assert!(count(&statuses, StatusCode::UNAUTHORIZED) <= 5, "{statuses:?}");
    assert!(right == StatusCode::OK || right == StatusCode::TOO_MANY_REQUESTS, "{right}");
    assert!(count(&statuses, StatusCode::TOO_MANY_REQUESTS) >= 25, "{statuses:?}");
}

/// Two replicas share one limit: a burst spread over both is allowed five failures in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_login_limit() {
    if postgres_url().is_none() {
        return;
    }
    let db = TestDb::new(Engine::Postgres).await;
    let env = [("MESHFLEET_LOGIN_MAX_FAILURES_PER_ADDRESS", "1000")];
    let (a, b) = server().two_replicas(&db, &env);
    let bases = [a.url(), b.url()];
    let http = reqwest::Client::new();
    let body = json!({ "email": "ada@example.com", "password": PASSWORD, "organization": "Acme" });
    assert!(http.post(format!("{}/api/v1/signup", bases[0])).json(&body).send().await.unwrap().status().is_success());
    let statuses = login_burst(&http, &bases, "ada@example.com", &["wrong password!!"; 40]).await;
    assert_eq!(count(&statuses, StatusCode::UNAUTHORIZED), 5, "{statuses:?}");
    assert_eq!(count(&statuses, StatusCode::TOO_MANY_REQUESTS), 35, "{statuses:?}");
    for base in &bases {
        let resp = http.post(format!("{base}/api/v1/login")).json(&json!({ "email": "ada@example.com", "password": PASSWORD })).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "{base}");
    }
}
