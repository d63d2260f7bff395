//! No plaintext password, token or key ever reaches the database file.

use serde_json::json;

use crate::helpers::{Engine, TestApp, PASSWORD};

#[tokio::test]
async fn database_file_holds_no_plaintext_secret() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let owner = app.owner("ada@example.com").await;
    let refreshed = app.post_anonymous("/api/v1/token/refresh", json!({ "refresh_token": owner.refresh })).await;
    let created = app.create_cluster(&owner, "c1", json!({})).await;
    let (_, api_token) = app.post("/api/v1/tokens", &owner.access, json!({ "name": "ci", "role": "viewer" })).await;
    let sealing_key = app.state.config.sealing_key.clone().map(|k| secrecy::ExposeSecret::expose_secret(&k).to_owned()).unwrap();

    let mut secrets = vec![
        PASSWORD.to_owned(),
        owner.access.clone(),
        owner.refresh.clone(),
        refreshed["refresh_token"].as_str().unwrap().to_owned(),
        refreshed["access_token"].as_str().unwrap().to_owned(),
        created["bootstrap_token"]["token"].as_str().unwrap().to_owned(),
        api_token["token"].as_str().unwrap().to_owned(),
        sealing_key,
    ];
    // The secret parts alone, without their recognisable prefixes.
    secrets.extend(secrets.clone().iter().filter_map(|s| s.get(4..).map(str::to_owned)));

    let dir = app.db.dir.path().to_owned();
    // Closing the pool checkpoints the WAL into the main file, so the scan sees everything.
    app.state.db.pool.close().await;
    let db = app.stop().await;
    let mut scanned = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.file_name().unwrap().to_string_lossy().starts_with("meshfleet.db") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        scanned += bytes.len();
        for secret in &secrets {
            assert!(!contains(&bytes, secret.as_bytes()), "{} contains a plaintext secret ({}...)", path.display(), &secret[..8]);
        }
    }
    assert!(scanned > 10_000, "scanned only {scanned} bytes");
    // The test can fail: the e-mail (not a secret) is found by the same scan.
    let all: Vec<u8> = ["meshfleet.db", "meshfleet.db-wal"].iter().flat_map(|f| std::fs::read(dir.join(f)).unwrap_or_default()).collect();
    assert!(contains(&all, b"ada@example.com"));
    drop(db);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
