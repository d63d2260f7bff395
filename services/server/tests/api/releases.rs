//! The release catalog: seeded with this repository's mesh version, written from the
//! operators' catalog file at start and through the operator API (a token only its SHA-256
//! is configured for; organization tokens never open it), read by everyone; and each
//! cluster's upgrades planned by the path rules, blocked by an agent too old for a hop, with
//! a control plane the catalog does not know as a health finding.

use meshfleet_agent_protocol::v1::{self, agent_message::Body};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Digest;

use crate::gateway::{pod, registered, snapshot, Stream};
use crate::helpers::{assert_problem, Engine, TestApp, TestDb};
use crate::on_both_engines;

on_both_engines!(
    the_catalog_is_seeded_read_by_everyone_and_written_by_operators,
    a_clusters_upgrades_follow_the_path_rules_and_its_agent,
    upgrade_policies_choose_the_channel_pin_and_windows_of_their_clusters,
    a_rollout_plan_previews_its_waves_and_who_stays_out,
);

const OPERATOR_TOKEN: &str = "op-3f9a2c7d41e8b6";
const OWN: &str = env!("CARGO_PKG_VERSION");

fn catalog_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("catalog.yaml");
    let yaml = "releases:
- {version: 0.2.0, released_on: 2026-11-02}
- version: 1.0.0
  released_on: 2026-11-20
  min_agent_version: 1.0.0
  cautions: [Proxies older than 0.2 lose their routes until restarted]
- {version: 1.1.0-edge.1, channel: edge, released_on: 2026-11-25}
";
    std::fs::write(&path, yaml).unwrap();
    path
}

async fn spawn(engine: Engine) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = catalog_file(dir.path());
    let db = TestDb::new(engine).await;
    let app = TestApp::spawn_with(db, |c| {
        c.release_catalog = Some(file);
        c.operator_token_sha256 = Some(sha2::Sha256::digest(OPERATOR_TOKEN).into());
    })
    .await;
    (app, dir)
}

fn versions(list: &Value) -> Vec<&str> {
    list["items"].as_array().unwrap().iter().map(|r| r["version"].as_str().unwrap()).collect()
}

async fn the_catalog_is_seeded_read_by_everyone_and_written_by_operators(engine: Engine) {
    let (app, _dir) = spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let viewer = app.member(&owner, "vic@example.com", "viewer").await;

    // Newest first, by semantic version; the seed is this repository's mesh.
    let (status, all) = app.get("/api/v1/releases", &viewer.access).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(versions(&all), ["1.1.0-edge.1", "1.0.0", "0.2.0", OWN]);
    let (_, stable) = app.get("/api/v1/releases?channel=stable", &viewer.access).await;
    assert_eq!(versions(&stable), ["1.0.0", "0.2.0", OWN]);
    let (status, one) = app.get("/api/v1/releases/1.0.0", &viewer.access).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["proxy_image"], "meshfleet/proxy:1.0.0");
    assert_eq!(one["cautions"], json!(["Proxies older than 0.2 lose their routes until restarted"]));
    let (status, body) = app.get("/api/v1/releases/latest", &viewer.access).await;
    assert_problem(status, &body, 400, "bad-request", Some("version"));
    let (status, body) = app.get("/api/v1/releases/9.9.9", &viewer.access).await;
    assert_problem(status, &body, 404, "not-found", None);
    let (status, _) = app.call(Method::GET, "/api/v1/releases", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Writes need the operator token: an organization owner's token is not one.
    let new = json!({ "version": "1.2.0", "released_on": "2026-12-01", "notes": "faster reloads" });
    let (status, body) = app.post("/api/v1/operator/releases", &owner.access, new.clone()).await;
    assert_problem(status, &body, 401, "unauthenticated", None);
    let (status, added) = app.post("/api/v1/operator/releases", OPERATOR_TOKEN, new.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    assert_eq!((added["channel"].as_str(), added["min_agent_version"].as_str(), added["yanked"].as_bool()), (Some("stable"), Some("0.0.0"), Some(false)));
    let (status, body) = app.post("/api/v1/operator/releases", OPERATOR_TOKEN, new).await;
    assert_problem(status, &body, 409, "release-exists", Some("version"));
    let bad = json!({ "version": "1.3", "released_on": "2026-12-01", "proxy_image": "meshfleet/proxy 1.3", "cautions": [" "] });
    let (status, body) = app.post("/api/v1/operator/releases", OPERATOR_TOKEN, bad).await;
    assert_problem(status, &body, 422, "validation", None);
    let fields: Vec<&str> = body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["version", "proxy_image", "cautions[0]"], "{body}");

    // Yanked: gone from the list (kept with include_yanked), never offered as an upgrade.
    let yank = Some(json!({ "yanked": true, "cautions": ["breaks HTTP/2 keep-alive"] }));
    let (status, yanked) = app.call(Method::PATCH, "/api/v1/operator/releases/0.2.0", Some(OPERATOR_TOKEN), yank.clone()).await;
    assert_eq!((status, yanked["yanked"].as_bool()), (StatusCode::OK, Some(true)), "{yanked}");
    let (status, body) = app.call(Method::PATCH, "/api/v1/operator/releases/0.2.0", Some(&viewer.access), yank).await;
    assert_problem(status, &body, 401, "unauthenticated", None);
    let (_, listed) = app.get("/api/v1/releases", &viewer.access).await;
    assert_eq!(versions(&listed), ["1.2.0", "1.1.0-edge.1", "1.0.0", OWN]);
    let (_, listed) = app.get("/api/v1/releases?include_yanked=true", &viewer.access).await;
    assert!(versions(&listed).contains(&"0.2.0"));

    // A service without the setting has no operator API at all.
    let closed = TestApp::spawn(engine).await;
    let (status, body) = closed.post("/api/v1/operator/releases", OPERATOR_TOKEN, json!({ "version": "1.2.0", "released_on": "2026-12-01" })).await;
    assert_problem(status, &body, 403, "forbidden", None);
    let someone = closed.owner("bo@example.com").await;
    let (_, listed) = closed.get("/api/v1/releases", &someone.access).await;
    assert_eq!(versions(&listed), [OWN], "only the seed without a catalog file");
}

/// Reports `version` as the cluster's control plane (acknowledged: stored).
async fn report_control_plane(stream: &mut Stream, version: &str) {
    let Body::Snapshot(mut s) = snapshot(vec![pod("shop", "web-1", "Deployment/web", version)]) else { unreachable!() };
    s.inventory.as_mut().unwrap().control_plane = Some(v1::ControlPlane { version: version.into(), replicas: 1, ready_replicas: 1, components: vec![] });
    let seq = stream.report(Body::Snapshot(s)).await;
    stream.acked(seq).await;
}

async fn a_clusters_upgrades_follow_the_path_rules_and_its_agent(engine: Engine) {
    let (app, _dir) = spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let (cluster, agent) = registered(&app, &owner, "prod").await;
    let mut stream = Stream::open(&app, &agent).await.unwrap();
    report_control_plane(&mut stream, OWN).await;

    let path = format!("/api/v1/clusters/{cluster}/upgrades");
    let (status, up) = app.get(&path, &owner.access).await;
    assert_eq!(status, StatusCode::OK, "{up}");
    assert_eq!((up["control_plane_version"].as_str(), up["support"].as_str(), up["channel"].as_str()), (Some(OWN), Some("supported"), Some("stable")), "{up}");
    let offered: Vec<(&str, Vec<&str>, bool)> = up["available"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (a["release"]["version"].as_str().unwrap(), a["hops"].as_array().unwrap().iter().map(|h| h.as_str().unwrap()).collect(), a["blocked"].is_null())
        })
        .collect();
    // The edge release is not on the stable channel; major 1 is entered at its latest (1.0.0),
    // which needs an agent newer than this one.
    assert_eq!(offered, [("1.0.0", vec!["1.0.0"], false), ("0.2.0", vec!["0.2.0"], true)], "{up}");
    let blocked = up["available"][0]["blocked"].as_str().unwrap();
    assert!(blocked.contains("needs agent 1.0.0 or newer"), "{blocked}");
    assert_eq!(up["available"][0]["cautions"], json!(["1.0.0: Proxies older than 0.2 lose their routes until restarted"]));

    // Another organization cannot see it.
    let other = app.owner("eve@example.com").await;
    let (status, body) = app.get(&path, &other.access).await;
    assert_problem(status, &body, 404, "not-found", None);

    // A version the catalog does not hold: nothing to plan from, and a health finding.
    report_control_plane(&mut stream, "7.7.7").await;
    let (_, up) = app.get(&path, &owner.access).await;
    assert_eq!((up["support"].as_str(), up["available"].as_array().map(Vec::len)), (Some("unknown"), Some(0)), "{up}");
    let health = format!("/api/v1/clusters/{cluster}/health");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let finding = loop {
        let (_, h) = app.get(&health, &owner.access).await;
        if let Some(f) = h["findings"].as_array().unwrap().iter().find(|f| f["check"] == "control_plane_version") {
            break f.clone();
        }
        assert!(std::time::Instant::now() < deadline, "no control_plane_version finding: {h}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!((finding["severity"].as_str(), finding["object"].as_str()), (Some("warning"), Some("ControlPlane")), "{finding}");
    assert!(finding["message"].as_str().unwrap().contains("7.7.7, which is not in the release catalog"), "{finding}");
}

fn offered(up: &Value) -> Vec<&str> {
    up["available"].as_array().unwrap().iter().map(|a| a["release"]["version"].as_str().unwrap()).collect()
}

async fn upgrade_policies_choose_the_channel_pin_and_windows_of_their_clusters(engine: Engine) {
    let (app, _dir) = spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let viewer = app.member(&owner, "vic@example.com", "viewer").await;
    let (canary, canary_agent) = registered(&app, &owner, "canary").await;
    let (status, _) =
        app.call(Method::PATCH, &format!("/api/v1/clusters/{canary}"), Some(&owner.access), Some(json!({ "labels": { "ring": "canary" } }))).await;
    assert_eq!(status, StatusCode::OK);
    let (prod, prod_agent) = registered(&app, &owner, "prod").await;
    for agent in [canary_agent, prod_agent] {
        let mut stream = Stream::open(&app, &agent).await.unwrap();
        report_control_plane(&mut stream, OWN).await;
        std::mem::forget(stream);
    }
    let upgrades = |id: &str| format!("/api/v1/clusters/{id}/upgrades");

    // No policy: stable, manual, any time.
    let (_, up) = app.get(&upgrades(&prod), &viewer.access).await;
    assert_eq!((up["policy"].clone(), up["mode"].as_str(), up["excluded"].as_bool()), (Value::Null, Some("manual"), Some(false)), "{up}");
    assert_eq!(offered(&up), ["1.0.0", "0.2.0"]);

    let edge = json!({ "name": "canaries on edge", "selector": "ring=canary", "position": 10, "channel": "edge", "mode": "automatic" });
    let (status, body) = app.post("/api/v1/upgrade-policies", &viewer.access, edge.clone()).await;
    assert_problem(status, &body, 403, "forbidden", None);
    let (status, edge) = app.post("/api/v1/upgrade-policies", &owner.access, edge).await;
    assert_eq!(status, StatusCode::CREATED, "{edge}");
    let nights = json!({ "name": "weekend nights", "windows": [{ "days": ["sat", "sun"], "start": "02:00", "end": "05:00" }], "time_zone": "Europe/Berlin" });
    let (status, nights) = app.post("/api/v1/upgrade-policies", &owner.access, nights).await;
    assert_eq!((status, nights["position"].as_i64(), nights["channel"].as_str()), (StatusCode::CREATED, Some(100), Some("stable")), "{nights}");

    // The canary follows edge: major 1 is entered at its newest edge release.
    let (_, up) = app.get(&upgrades(&canary), &viewer.access).await;
    assert_eq!(
        (up["policy"]["name"].as_str(), up["channel"].as_str(), up["mode"].as_str()),
        (Some("canaries on edge"), Some("edge"), Some("automatic")),
        "{up}"
    );
    assert_eq!(offered(&up), ["1.1.0-edge.1", "0.2.0"]);
    // Prod gets the window: its next opening is 02:00 in Berlin on a weekend (or now).
    let (_, up) = app.get(&upgrades(&prod), &viewer.access).await;
    assert_eq!(up["policy"]["id"], nights["id"], "{up}");
    let next = chrono::DateTime::parse_from_rfc3339(up["next_window"].as_str().unwrap()).unwrap();
    let berlin = next.with_timezone(&chrono_tz::Europe::Berlin);
    let now = chrono::Utc::now();
    assert!(next <= now + chrono::Duration::days(7) && next >= now - chrono::Duration::seconds(5), "{up}");
    use chrono::{Datelike, Timelike};
    if next > now + chrono::Duration::seconds(5) {
        assert_eq!((berlin.hour(), berlin.minute()), (2, 0), "{berlin}");
        assert!(matches!(berlin.weekday(), chrono::Weekday::Sat | chrono::Weekday::Sun), "{berlin}");
    }

    // Pinned: the only upgrade offered is the pin.
    let id = nights["id"].as_str().unwrap();
    let pinned = json!({ "name": "weekend nights", "pinned_version": "0.2.0", "excluded": true });
    let (status, body) = app.call(Method::PUT, &format!("/api/v1/upgrade-policies/{id}"), Some(&owner.access), Some(pinned)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, up) = app.get(&upgrades(&prod), &viewer.access).await;
    assert_eq!((offered(&up), up["pinned_version"].as_str(), up["excluded"].as_bool()), (vec!["0.2.0"], Some("0.2.0"), Some(true)), "{up}");

    // Bad policies name every wrong field; another organization sees none of them.
    let bad = json!({ "name": "", "selector": "ring in (", "windows": [{ "days": [], "start": "25:00", "end": "05:00" }], "time_zone": "Moon/Base", "pinned_version": "1.x" });
    let (status, body) = app.post("/api/v1/upgrade-policies", &owner.access, bad).await;
    assert_problem(status, &body, 422, "validation", None);
    let fields: Vec<&str> = body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["name", "selector", "windows[0].start", "windows[0].days", "time_zone", "pinned_version"], "{body}");
    let (status, body) = app.post("/api/v1/upgrade-policies", &owner.access, json!({ "name": "x", "colour": "red" })).await;
    assert_problem(status, &body, 422, "validation", Some("colour"));
    let other = app.owner("eve@example.com").await;
    let (status, _) = app.get(&format!("/api/v1/upgrade-policies/{id}"), &other.access).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, theirs) = app.get("/api/v1/upgrade-policies", &other.access).await;
    assert_eq!(theirs, json!([]));
    let (status, _) = app.call(Method::DELETE, &format!("/api/v1/upgrade-policies/{id}"), Some(&other.access), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Deleted: prod is back on the defaults; every change is audited.
    let (status, _) = app.call(Method::DELETE, &format!("/api/v1/upgrade-policies/{id}"), Some(&owner.access), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, up) = app.get(&upgrades(&prod), &viewer.access).await;
    assert_eq!(up["policy"], Value::Null);
    let (_, audit) = app.get("/api/v1/audit", &owner.access).await;
    let actions = audit.to_string();
    for action in ["upgrade_policy.create", "upgrade_policy.update", "upgrade_policy.delete"] {
        assert!(actions.contains(action), "{action} missing: {audit}");
    }
}

async fn a_rollout_plan_previews_its_waves_and_who_stays_out(engine: Engine) {
    let (app, _dir) = spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let viewer = app.member(&owner, "vic@example.com", "viewer").await;
    // Five clusters at this repository's version, one at 0.2.0 already, one never reported.
    for (name, version) in [("eu-1", OWN), ("eu-2", OWN), ("us-1", OWN), ("us-2", OWN), ("ap-1", OWN), ("done", "0.2.0")] {
        let (id, agent) = registered(&app, &owner, name).await;
        if name.starts_with("eu") {
            let (status, _) =
                app.call(Method::PATCH, &format!("/api/v1/clusters/{id}"), Some(&owner.access), Some(json!({ "labels": { "region": "eu" } }))).await;
            assert_eq!(status, StatusCode::OK);
        }
        let mut stream = Stream::open(&app, &agent).await.unwrap();
        report_control_plane(&mut stream, version).await;
    }
    registered(&app, &owner, "silent").await;
    let other = app.owner("eve@example.com").await;
    registered(&app, &other, "not-yours").await;

    let request = json!({ "target_version": "0.2.0", "settings": { "waves": { "canary_selector": "region=eu", "batch_percent": 50 } } });
    let (status, body) = app.post("/api/v1/rollouts/plan", &viewer.access, request.clone()).await;
    assert_problem(status, &body, 403, "forbidden", None);
    let (status, plan) = app.post("/api/v1/rollouts/plan", &owner.access, request).await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    let waves: Vec<(&str, Vec<&str>)> = plan["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["kind"].as_str().unwrap(), w["clusters"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect()))
        .collect();
    assert_eq!(waves, [("canary", vec!["eu-1", "eu-2"]), ("batch", vec!["ap-1", "us-1"]), ("batch", vec!["us-2"])], "{plan}");
    assert_eq!(plan["waves"][0]["clusters"][0]["hops"], json!(["0.2.0"]));
    let skipped: Vec<(&str, &str)> = plan["skipped"].as_array().unwrap().iter().map(|s| (s["name"].as_str().unwrap(), s["reason"].as_str().unwrap())).collect();
    assert_eq!(skipped, [("done", "it runs 0.2.0 already"), ("silent", "its control plane has not reported a version")], "{plan}");

    // A selector narrows it; the target must be in the catalog; every wrong field is named.
    let (_, plan) = app.post("/api/v1/rollouts/plan", &owner.access, json!({ "target_version": "0.2.0", "selector": "region=eu" })).await;
    assert_eq!(plan["waves"].as_array().map(Vec::len), Some(2), "{plan}");
    let bad = json!({ "target_version": "9.9.9", "selector": "region in (", "settings": { "waves": { "batch_percent": 0 }, "verify_seconds": 0 } });
    let (status, body) = app.post("/api/v1/rollouts/plan", &owner.access, bad).await;
    assert_problem(status, &body, 422, "validation", None);
    let fields: Vec<&str> = body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["selector", "settings.waves.batch_percent", "settings.verify_seconds", "target_version"], "{body}");
}
