//! Credentials that must not work: forged, expired, wrong-key and `alg: none` JWTs; revoked
//! and expired API tokens; tokens of members who left or were demoted. And the API token
//! lifecycle and signing-key rotation.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use ring::signature::Ed25519KeyPair;
use serde_json::json;

use crate::helpers::{assert_problem, Engine, Login, TestApp};
use crate::on_both_engines;

on_both_engines!(
    forged_expired_and_unsigned_jwts_are_rejected,
    api_token_lifecycle,
    signing_key_rotation_keeps_old_tokens_valid,
    a_removed_members_tokens_stop_at_once,
    a_demoted_members_tokens_are_capped_at_the_new_role,
);

async fn forged_expired_and_unsigned_jwts_are_rejected(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let login = app.owner("ada@example.com").await;
    let kid = app.state.keys.signing_kid();
    let [header_b64, payload_b64, signature_b64]: [&str; 3] = login.access.split('.').collect::<Vec<_>>().try_into().unwrap();
    let valid: meshfleet_server::jwt::Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload_b64).unwrap()).unwrap();

    // Expired, but otherwise correctly signed by the service's own key.
    let mut expired = valid.clone();
    expired.exp = expired.iat - 1;
    let expired = app.state.keys.sign(&expired);

    // Signed by a key the service never issued, claiming the service's kid.
    let rng = ring::rand::SystemRandom::new();
    let other = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.clone());
    let wrong_key = jsonwebtoken::encode(&header, &valid, &EncodingKey::from_ed_der(other.as_ref())).unwrap();

    // A payload promoted to another organization under the original signature.
    let mut tampered_claims = serde_json::to_value(&valid).unwrap();
    tampered_claims["org"] = json!(uuid::Uuid::now_v7());
    let tampered = format!("{header_b64}.{}.{signature_b64}", URL_SAFE_NO_PAD.encode(tampered_claims.to_string()));

    // `alg: none`, and HMAC keyed with nothing secret.
    let none_header = URL_SAFE_NO_PAD.encode(json!({ "alg": "none", "typ": "JWT", "kid": kid }).to_string());
    let alg_none = format!("{none_header}.{payload_b64}.");
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(kid);
    let hmac = jsonwebtoken::encode(&hs, &valid, &EncodingKey::from_secret(b"")).unwrap();

    for (what, token) in [
        ("expired", expired.as_str()),
        ("wrong key", &wrong_key),
        ("tampered", &tampered),
        ("alg none", &alg_none),
        ("hs256", &hmac),
        ("garbage", "not.a.jwt"),
        ("empty parts", ".."),
    ] {
        let (status, body) = app.get("/api/v1/me", token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what} accepted: {body}");
        assert_problem(status, &body, 401, "unauthenticated", None);
    }
    assert_eq!(app.get("/api/v1/me", &login.access).await.0, StatusCode::OK);

    // No header, wrong scheme.
    assert_eq!(app.call(Method::GET, "/api/v1/me", None, None).await.0, StatusCode::UNAUTHORIZED);
    let resp = app.client.get(format!("{}/api/v1/me", app.base)).header("authorization", format!("Basic {}", login.access)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");

    // Time passes: the real token expires after 15 minutes.
    app.state.clock.advance(Duration::from_secs(15 * 60 + 1));
    assert_eq!(app.get("/api/v1/me", &login.access).await.0, StatusCode::UNAUTHORIZED);
}

async fn api_token_lifecycle(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let admin = app.member(&owner, "admin@example.com", "admin").await;

    let (status, body) = app.post("/api/v1/tokens", &admin.access, json!({ "name": "ci", "role": "owner" })).await;
    assert_problem(status, &body, 422, "validation", Some("role"));
    let (status, body) = app.post("/api/v1/tokens", &admin.access, json!({ "name": "", "role": "viewer", "expires_in_days": 0 })).await;
    assert_problem(status, &body, 422, "validation", Some("expires_in_days"));
    assert_problem(status, &body, 422, "validation", Some("name"));

    let (status, created) = app.post("/api/v1/tokens", &admin.access, json!({ "name": "ci", "role": "viewer", "expires_in_days": 7 })).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("mft_") && secret.starts_with(created["prefix"].as_str().unwrap()));

    // The token acts with its own role, through the same extractor as a JWT.
    assert_eq!(app.get("/api/v1/clusters", &secret).await.0, StatusCode::OK);
    assert_eq!(app.post("/api/v1/clusters", &secret, json!({ "name": "c1" })).await.0, StatusCode::FORBIDDEN);
    let (_, me) = app.get("/api/v1/me", &secret).await;
    assert_eq!(me["api_token_id"], id.as_str());
    assert_eq!(me["organization"]["role"], "viewer");

    // Listed with prefix and last use, never the secret.
    let (status, list) = app.get("/api/v1/tokens", &owner.access).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!list.to_string().contains(&secret));
    assert_eq!(list[0]["name"], "ci");
    assert!(list[0]["last_used_at"].is_string(), "{list}");

    // Revoked: refused at once; a second revoke is a 404.
    let (status, _) = app.call(Method::DELETE, &format!("/api/v1/tokens/{id}"), Some(&owner.access), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/api/v1/clusters", &secret).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.call(Method::DELETE, &format!("/api/v1/tokens/{id}"), Some(&owner.access), None).await.0, StatusCode::NOT_FOUND);

    // Expired: a 1-day token stops working after a day.
    let (_, short) = app.post("/api/v1/tokens", &owner.access, json!({ "name": "short", "role": "admin", "expires_in_days": 1 })).await;
    let short = short["token"].as_str().unwrap();
    assert_eq!(app.get("/api/v1/clusters", short).await.0, StatusCode::OK);
    app.state.clock.advance(Duration::from_secs(86_400 + 1));
    assert_eq!(app.get("/api/v1/clusters", short).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.get("/api/v1/clusters", "mft_made_up").await.0, StatusCode::UNAUTHORIZED);
}

async fn signing_key_rotation_keeps_old_tokens_valid(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let before = app.owner("ada@example.com").await;
    let old_kid = jsonwebtoken::decode_header(&before.access).unwrap().kid.unwrap();
    let new_kid = app.state.keys.rotate(&app.state.db, &app.state.sealer, app.state.clock.now_ms()).await.unwrap();
    assert_ne!(old_kid, new_kid);
    let after = app.login("ada@example.com").await;
    assert_eq!(jsonwebtoken::decode_header(&after.access).unwrap().kid.unwrap(), new_kid);
    assert_eq!(app.get("/api/v1/me", &before.access).await.0, StatusCode::OK);
    assert_eq!(app.get("/api/v1/me", &after.access).await.0, StatusCode::OK);
}

/// An API token with `role` made by `who`, and the token it made in turn (same role).
async fn token_and_grandchild(app: &TestApp, who: &Login, role: &str) -> (String, String) {
    let (status, created) = app.post("/api/v1/tokens", &who.access, json!({ "name": "ci", "role": role })).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    let (status, child) = app.post("/api/v1/tokens", &token, json!({ "name": "ci-child", "role": role })).await;
    assert_eq!(status, StatusCode::CREATED, "{child}");
    assert_eq!(child["created_by"], created["created_by"], "a token made by a token acts for the same member");
    (token, child["token"].as_str().unwrap().to_owned())
}

async fn a_removed_members_tokens_stop_at_once(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let admin = app.member(&owner, "admin@example.com", "admin").await;
    let cluster = app.create_cluster(&owner, "c1", json!({})).await["cluster"]["id"].as_str().unwrap().to_owned();
    let (token, child) = token_and_grandchild(&app, &admin, "admin").await;
    let commands = format!("/api/v1/clusters/{cluster}/commands");
    let manifest = format!("/api/v1/clusters/{cluster}/install.yaml");
    let (_, me) = app.get("/api/v1/me", &admin.access).await;
    let admin_id = me["user"]["id"].as_str().unwrap().to_owned();
    let rejoin = json!({ "email": "admin@example.com", "role": "admin" });
    for t in [&token, &child] {
        assert_eq!(app.post(&commands, t, json!({ "kind": "ping" })).await.0, StatusCode::CREATED);
        assert_eq!(app.get(&manifest, t).await.0, StatusCode::OK);
    }

    let (status, _) = app.call(Method::DELETE, &format!("/api/v1/members/{admin_id}"), Some(&owner.access), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for t in [&token, &child] {
        let (status, body) = app.post(&commands, t, json!({ "kind": "ping" })).await;
        assert_problem(status, &body, 401, "unauthenticated", None);
        assert_eq!(app.get(&manifest, t).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(app.post("/api/v1/members", t, rejoin.clone()).await.0, StatusCode::UNAUTHORIZED);
    }
    let (_, list) = app.get("/api/v1/tokens", &owner.access).await;
    assert!(list.as_array().unwrap().iter().all(|t| t["revoked_at"].is_string()), "revoked, as the list shows: {list}");

    // Added back, the member gets new sessions, not their old tokens.
    assert_eq!(app.post("/api/v1/members", &owner.access, rejoin).await.0, StatusCode::CREATED);
    assert_eq!(app.get(&manifest, &token).await.0, StatusCode::UNAUTHORIZED);
}

async fn a_demoted_members_tokens_are_capped_at_the_new_role(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let admin = app.member(&owner, "admin@example.com", "admin").await;
    let (token, child) = token_and_grandchild(&app, &admin, "admin").await;
    let (_, me) = app.get("/api/v1/me", &admin.access).await;
    let member = format!("/api/v1/members/{}", me["user"]["id"].as_str().unwrap());
    assert_eq!(app.post("/api/v1/clusters", &token, json!({ "name": "before" })).await.0, StatusCode::CREATED);

    let (status, _) = app.call(Method::PATCH, &member, Some(&owner.access), Some(json!({ "role": "viewer" }))).await;
    assert_eq!(status, StatusCode::OK);
    for (i, t) in [&token, &child].into_iter().enumerate() {
        let (status, body) = app.post("/api/v1/clusters", t, json!({ "name": format!("after-{i}") })).await;
        assert_problem(status, &body, 403, "forbidden", None);
        assert_eq!(app.get("/api/v1/clusters", t).await.0, StatusCode::OK, "still a viewer");
        assert_eq!(app.get("/api/v1/me", t).await.1["organization"]["role"], "viewer");
        let (status, body) = app.post("/api/v1/tokens", t, json!({ "name": "escape", "role": "admin" })).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "no admin token out of a capped one: {body}");
    }

    // Capped, not revoked: promoted again, the token has its own role back, never more.
    let (status, _) = app.call(Method::PATCH, &member, Some(&owner.access), Some(json!({ "role": "owner" }))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.post("/api/v1/clusters", &token, json!({ "name": "again" })).await.0, StatusCode::CREATED);
    assert_eq!(app.get("/api/v1/me", &token).await.1["organization"]["role"], "admin");
}
