//! Rollouts run end to end against the demo fleet simulator, whose clusters carry out the
//! upgrade commands and report what changed: a good version goes through in waves (control
//! plane, then workloads, then the gates), a bad one fails its canary's gate, which is rolled
//! back while the rollout pauses and the second cluster is never touched; and the steering
//! (pause, resume, abort, skip, retry) with its refusals.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, Engine, Login, TestApp, TestDb, PASSWORD};
use crate::on_both_engines;

on_both_engines!(
    a_rollout_upgrades_good_clusters_in_waves_and_rolls_a_bad_canary_back,
    a_cluster_being_upgraded_raises_no_version_skew_alert,
    a_server_restarted_mid_rollout_continues_without_repeating_a_step,
    nothing_starts_outside_a_maintenance_window,
    pods_the_restart_left_alone_are_shown_on_the_clusters_run,
);

/// A simulated fleet of `n` clusters named `<prefix>-NNNN`; a bad one fails 30% of requests
/// once its workloads run another proxy.
pub(crate) fn fleet(app: &TestApp, prefix: &str, n: usize, bad: bool, dir: &std::path::Path) -> tokio::sync::oneshot::Sender<()> {
    let config = meshfleet_sim::FleetConfig {
        api_url: app.base.clone(),
        auth: meshfleet_sim::Auth::Password { email: "ada@example.com".into(), password: SecretString::from(PASSWORD.to_owned()) },
        clusters: n,
        prefix: prefix.into(),
        state_dir: dir.join(prefix),
        metrics_interval: Duration::from_millis(200),
        status_interval: Duration::from_secs(60),
        agent_version: "meshfleet-sim/0.1.0".into(),
        setup_concurrency: n,
        bad_upgrade_share: if bad { 1.0 } else { 0.0 },
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(meshfleet_sim::run(config, async move {
        let _ = stopped.await;
    }));
    stop
}

pub(crate) async fn until(what: &str, secs: u64, mut check: impl AsyncFnMut() -> Option<Value>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = None;
    while Instant::now() < deadline {
        match check().await {
            Some(v) => return v,
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
        last = Some(());
    }
    panic!("{what}: not within {secs} s ({last:?})");
}

/// The ids of the clusters whose name starts with `prefix`, once all `n` report traffic.
pub(crate) async fn connected(app: &TestApp, owner: &Login, prefix: &str, n: usize) -> Vec<String> {
    let page = until(&format!("{n} {prefix} clusters reporting"), 60, async || {
        let (_, page) = app.get("/api/v1/clusters?limit=100", &owner.access).await;
        let ours: Vec<&Value> = page["items"].as_array()?.iter().filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with(prefix))).collect();
        let ready = ours.len() == n && ours.iter().all(|c| c["status"] == "connected");
        ready.then(|| json!(ours))
    })
    .await;
    let ids: Vec<String> = page.as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect();
    for id in &ids {
        let (status, _) = app.call(Method::PATCH, &format!("/api/v1/clusters/{id}"), Some(&owner.access), Some(json!({ "labels": { "fleet": prefix } }))).await;
        assert_eq!(status, StatusCode::OK);
        // A few seconds of metrics first: the baseline.
        until("metrics", 30, async || {
            let (_, m) = app.get(&format!("/api/v1/clusters/{id}/metrics"), &owner.access).await;
            m["items"].as_array().filter(|i| !i.is_empty()).map(|_| Value::Null)
        })
        .await;
    }
    ids
}

pub(crate) fn phases(r: &Value) -> Vec<(String, String)> {
    r["clusters"].as_array().unwrap().iter().map(|c| (c["name"].as_str().unwrap().to_owned(), c["phase"].as_str().unwrap().to_owned())).collect()
}

pub(crate) async fn rollout_until(app: &TestApp, owner: &Login, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, r) = app.get(&format!("/api/v1/rollouts/{id}"), &owner.access).await;
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{what}: not within 90 s: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn control_plane(app: &TestApp, owner: &Login, cluster: &str) -> String {
    app.get(&format!("/api/v1/clusters/{cluster}/upgrades"), &owner.access).await.1["control_plane_version"].as_str().unwrap_or_default().to_owned()
}

/// The reasons of the cluster's rollout events, newest first.
async fn rollout_events(app: &TestApp, owner: &Login, cluster: &str) -> Vec<String> {
    let (_, ev) = app.get(&format!("/api/v1/clusters/{cluster}/events?limit=100"), &owner.access).await;
    ev["items"].as_array().unwrap().iter().filter_map(|e| e["reason"].as_str().filter(|r| r.starts_with("Rollout")).map(str::to_owned)).collect()
}

pub(crate) async fn commands_of(app: &TestApp, owner: &Login, cluster: &str) -> Vec<String> {
    let (_, page) = app.get(&format!("/api/v1/clusters/{cluster}/commands"), &owner.access).await;
    page["items"].as_array().unwrap().iter().map(|c| c["kind"].as_str().unwrap().to_owned()).collect()
}

async fn a_rollout_upgrades_good_clusters_in_waves_and_rolls_a_bad_canary_back(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.yaml");
    std::fs::write(&catalog, "releases:\n- {version: 0.2.0, released_on: 2026-12-01}\n").unwrap();
    let app = TestApp::spawn_with(TestDb::new(engine).await, |c| c.release_catalog = Some(catalog.clone())).await;
    let owner = app.owner("ada@example.com").await;
    let viewer = app.member(&owner, "vic@example.com", "viewer").await;
    let _good = fleet(&app, "good", 2, false, dir.path());
    let _bad = fleet(&app, "bad", 2, true, dir.path());
    let good = connected(&app, &owner, "good", 2).await;
    let bad = connected(&app, &owner, "bad", 2).await;
    // The sim's latency noise is not what these runs test; the success rate is. Its short dips
    // (up to 15% of one workload's requests) stay well under 10 points; a bad upgrade fails 30%.
    let settings = |fleet: &str| {
        json!({ "target_version": "0.2.0", "selector": format!("fleet={fleet}"), "settings": {
            "waves": { "canary_count": 1, "batch_percent": 100 }, "verify_seconds": 3, "soak_seconds": 1,
            "gates": { "max_success_rate_drop_points": 10, "max_p99_increase_percent": 10000 } } })
    };

    // Only admins start one.
    let (status, body) = app.post("/api/v1/rollouts", &viewer.access, settings("good")).await;
    assert_problem(status, &body, 403, "forbidden", None);

    // A good version: the canary, then the rest, each control plane then data plane.
    let (status, started) = app.post("/api/v1/rollouts", &owner.access, settings("good")).await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    assert_eq!((started["state"].as_str(), started["waves"].as_u64()), (Some("running"), Some(2)), "{started}");
    let id = started["id"].as_str().unwrap().to_owned();
    let (status, body) = app.post("/api/v1/rollouts", &owner.access, settings("good")).await;
    assert_problem(status, &body, 409, "cluster-in-rollout", Some("selector"));
    let done = rollout_until(&app, &owner, &id, "the good rollout completes", |r| r["state"] == "completed").await;
    assert!(phases(&done).iter().all(|(_, p)| p == "done"), "{done}");
    for c in done["clusters"].as_array().unwrap() {
        let m = &c["measured"];
        assert!(m["requests"].as_i64().unwrap() > 0, "the gates saw traffic after the restart: {c}");
        assert!(c["baseline"]["success_rate"].as_f64().unwrap() > 0.9, "{c}");
    }
    for cluster in &good {
        assert_eq!(control_plane(&app, &owner, cluster).await, "0.2.0");
        let inv = app.get(&format!("/api/v1/clusters/{cluster}/inventory"), &owner.access).await.1;
        assert!(inv["pods"].as_array().unwrap().iter().all(|p| p["proxy_version"] == "0.2.0"), "{inv}");
        let kinds = commands_of(&app, &owner, cluster).await;
        assert_eq!(kinds, ["restart-workloads", "set-control-plane-version"], "one command per step, newest first");
        // Each step is in the cluster's events too, newest first.
        assert_eq!(
            rollout_events(&app, &owner, cluster).await,
            ["RolloutGatesPassed", "RolloutVerifying", "RolloutDataPlane", "RolloutControlPlane"],
            "{cluster}"
        );
    }
    let (_, audit) = app.get("/api/v1/audit?limit=200", &owner.access).await;
    let audit = audit.to_string();
    assert!(audit.contains("rollout.start") && audit.contains("rollout.step") && audit.contains("rollout.progress"), "{audit}");

    // A bad version: the canary's gate fails, it is rolled back, the rollout pauses, and the
    // second cluster is never touched.
    let (status, started) = app.post("/api/v1/rollouts", &owner.access, settings("bad")).await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let id = started["id"].as_str().unwrap().to_owned();
    let canary = started["clusters"][0]["id"].as_str().unwrap().to_owned();
    let paused = rollout_until(&app, &owner, &id, "the bad canary is rolled back", |r| r["clusters"][0]["phase"] == "rolled_back").await;
    assert_eq!(paused["state"], "paused", "{paused}");
    let reason = paused["reason"].as_str().unwrap();
    assert!(reason.contains("gate failed: success rate fell") && reason.contains("rolled back"), "{reason}");
    assert_eq!(phases(&paused)[1].1, "pending", "{paused}");
    assert_eq!(control_plane(&app, &owner, &canary).await, "0.1.0", "the canary's control plane is back");
    assert_eq!(
        rollout_events(&app, &owner, &canary).await,
        ["RolloutRolledBack", "RolloutRollingBack", "RolloutGateFailed", "RolloutVerifying", "RolloutDataPlane", "RolloutControlPlane"]
    );
    let (_, ev) = app.get(&format!("/api/v1/clusters/{canary}/events"), &owner.access).await;
    let failed = ev["items"].as_array().unwrap().iter().find(|e| e["reason"] == "RolloutGateFailed").unwrap().clone();
    let message = failed["message"].as_str().unwrap();
    assert!(failed["type"] == "Warning" && message.contains("gate failed: success rate fell") && message.contains("(rollout to 0.2.0)"), "{failed}");
    let canary_pods = until("the canary's proxies back at 0.1.0", 30, async || {
        let inv = app.get(&format!("/api/v1/clusters/{canary}/inventory"), &owner.access).await.1;
        inv["pods"].as_array()?.iter().all(|p| p["proxy_version"] == "0.1.0").then_some(inv)
    })
    .await;
    assert!(!canary_pods["pods"].as_array().unwrap().is_empty());
    let second = bad.iter().find(|c| **c != canary).unwrap();
    assert!(commands_of(&app, &owner, second).await.is_empty(), "the second cluster got no command");
    assert_eq!(control_plane(&app, &owner, second).await, "0.1.0");

    // Steering: skip the second cluster, resume (nothing is left, so it completes); a resumed
    // or finished rollout refuses what does not apply.
    let skip = format!("/api/v1/rollouts/{id}/clusters/{second}/skip");
    let (status, body) = app.call(Method::POST, &skip, Some(&viewer.access), None).await;
    assert_problem(status, &body, 403, "forbidden", None);
    let (status, skipped) = app.call(Method::POST, &skip, Some(&owner.access), None).await;
    assert_eq!((status, phases(&skipped)[1].1.as_str()), (StatusCode::OK, "skipped"), "{skipped}");
    let (status, body) = app.call(Method::POST, &format!("/api/v1/rollouts/{id}/clusters/{canary}/skip"), Some(&owner.access), None).await;
    assert_eq!(status, StatusCode::OK, "a rolled-back cluster can be skipped too: {body}");
    let (status, resumed) = app.call(Method::POST, &format!("/api/v1/rollouts/{id}/resume"), Some(&owner.access), None).await;
    assert_eq!((status, resumed["state"].as_str()), (StatusCode::OK, Some("running")), "{resumed}");
    rollout_until(&app, &owner, &id, "the rest of the bad rollout completes", |r| r["state"] == "completed").await;
    let (status, body) = app.call(Method::POST, &format!("/api/v1/rollouts/{id}/pause"), Some(&owner.access), None).await;
    assert_problem(status, &body, 409, "rollout-state", None);
    let (status, body) = app.call(Method::POST, &format!("/api/v1/rollouts/{id}/restart"), Some(&owner.access), None).await;
    assert_problem(status, &body, 400, "bad-request", None);

    // Abort: nothing more is sent.
    let (status, third) = app.post("/api/v1/rollouts", &owner.access, settings("bad")).await;
    assert_eq!(status, StatusCode::CREATED, "{third}");
    let third = third["id"].as_str().unwrap().to_owned();
    let (status, aborted) = app.call(Method::POST, &format!("/api/v1/rollouts/{third}/abort"), Some(&owner.access), None).await;
    assert_eq!((status, aborted["state"].as_str()), (StatusCode::OK, Some("aborted")), "{aborted}");
    let other = app.owner("eve@example.com").await;
    let (status, body) = app.get(&format!("/api/v1/rollouts/{third}"), &other.access).await;
    assert_problem(status, &body, 404, "not-found", None);
    let (_, theirs) = app.get("/api/v1/rollouts", &other.access).await;
    assert_eq!(theirs, json!([]));
}

/// Reports a control plane at `cp` with proxies at `proxies` (acknowledged: stored).
pub(crate) async fn report(stream: &mut crate::gateway::Stream, cp: &str, proxies: &str) {
    use meshfleet_agent_protocol::v1::{self, agent_message::Body};
    let pods = vec![crate::gateway::pod("shop", "web-1", "Deployment/web", proxies), crate::gateway::pod("shop", "web-2", "Deployment/web", proxies)];
    let Body::Snapshot(mut s) = crate::gateway::snapshot(pods) else { unreachable!() };
    s.inventory.as_mut().unwrap().control_plane = Some(v1::ControlPlane { version: cp.into(), replicas: 1, ready_replicas: 1, components: vec![] });
    let seq = stream.report(Body::Snapshot(s)).await;
    stream.acked(seq).await;
}

/// Two clusters whose proxies fall two major versions behind the control plane: the one a
/// rollout is upgrading gets no version-skew alert meanwhile, the other does.
async fn a_cluster_being_upgraded_raises_no_version_skew_alert(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.yaml");
    std::fs::write(&catalog, "releases:\n- {version: 2.0.0, released_on: 2026-11-01}\n- {version: 2.1.0, released_on: 2026-12-01}\n").unwrap();
    let app = TestApp::spawn_with(TestDb::new(engine).await, |c| {
        c.release_catalog = Some(catalog.clone());
        c.alert_evaluation = Duration::from_millis(50);
        // These agents send no heartbeats; they must not turn stale during the test.
        c.stale_after = Duration::from_secs(600);
        c.disconnected_after = Duration::from_secs(1200);
    })
    .await;
    let owner = app.owner("ada@example.com").await;
    let mut streams = Vec::new();
    let mut ids = Vec::new();
    for name in ["steady", "upgrading"] {
        let (id, agent) = crate::gateway::registered(&app, &owner, name).await;
        let mut stream = crate::gateway::Stream::open(&app, &agent).await.unwrap();
        report(&mut stream, "2.0.0", "2.0.0").await;
        streams.push(stream);
        ids.push(id);
    }
    let (status, _) =
        app.call(Method::PATCH, &format!("/api/v1/clusters/{}", ids[1]), Some(&owner.access), Some(json!({ "labels": { "ring": "next" } }))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, started) = app.post("/api/v1/rollouts", &owner.access, json!({ "target_version": "2.1.0", "selector": "ring=next" })).await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let id = started["id"].as_str().unwrap();
    // The agent here does not answer commands: the cluster stays in its control-plane step.
    rollout_until(&app, &owner, id, "the upgrade under way", |r| r["clusters"][0]["phase"] == "control_plane").await;
    for stream in &mut streams {
        report(stream, "2.0.0", "0.1.0").await;
    }
    let alerts = crate::alerts::alerts(&app, &owner, "", |a| a.iter().any(|a| a["rule"] == "version_skew" && a["state"] == "firing")).await;
    let skewed: Vec<&str> = alerts.iter().filter(|a| a["rule"] == "version_skew").map(|a| a["cluster_id"].as_str().unwrap()).collect();
    assert_eq!(skewed, [ids[0].as_str()], "only the steady cluster: {alerts:?}");
    // Still none a few evaluations later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, later) = app.get("/api/v1/alerts", &owner.access).await;
    let skewed = later["items"].as_array().unwrap().iter().filter(|a| a["rule"] == "version_skew").count();
    assert_eq!(skewed, 1, "{later}");
}

/// The server stopped while a cluster's workloads restart and started again: the rollout
/// finishes from the saved step, each step's command sent once.
async fn a_server_restarted_mid_rollout_continues_without_repeating_a_step(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.yaml");
    std::fs::write(&catalog, "releases:\n- {version: 0.2.0, released_on: 2026-12-01}\n").unwrap();
    let app = TestApp::spawn_with(TestDb::new(engine).await, |c| c.release_catalog = Some(catalog.clone())).await;
    let owner = app.owner("ada@example.com").await;
    let _fleet = fleet(&app, "one", 1, false, dir.path());
    let cluster = connected(&app, &owner, "one", 1).await.remove(0);
    let request = json!({ "target_version": "0.2.0", "settings": { "verify_seconds": 3, "gates": { "max_success_rate_drop_points": 10, "max_p99_increase_percent": 10000 } } });
    let (status, started) = app.post("/api/v1/rollouts", &owner.access, request).await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let id = started["id"].as_str().unwrap().to_owned();
    rollout_until(&app, &owner, &id, "the data plane step", |r| matches!(r["clusters"][0]["phase"].as_str(), Some("data_plane" | "verifying"))).await;
    let app = app.restart().await;
    let owner = app.login("ada@example.com").await;
    let done = rollout_until(&app, &owner, &id, "the rollout finishes after the restart", |r| r["state"] == "completed").await;
    assert_eq!(phases(&done), [("one-0000".to_owned(), "done".to_owned())], "{done}");
    assert_eq!(commands_of(&app, &owner, &cluster).await, ["restart-workloads", "set-control-plane-version"], "no step sent twice");
    assert_eq!(control_plane(&app, &owner, &cluster).await, "0.2.0");
}

/// A cluster whose upgrade policy's window is closed stays pending, saying when the window
/// opens; with the window gone, its upgrade starts.
async fn nothing_starts_outside_a_maintenance_window(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.yaml");
    std::fs::write(&catalog, "releases:\n- {version: 2.0.0, released_on: 2026-11-01}\n- {version: 2.1.0, released_on: 2026-12-01}\n").unwrap();
    let app = TestApp::spawn_with(TestDb::new(engine).await, |c| {
        c.release_catalog = Some(catalog.clone());
        c.stale_after = Duration::from_secs(600);
        c.disconnected_after = Duration::from_secs(1200);
    })
    .await;
    let owner = app.owner("ada@example.com").await;
    let (id, agent) = crate::gateway::registered(&app, &owner, "nightly").await;
    let mut stream = crate::gateway::Stream::open(&app, &agent).await.unwrap();
    report(&mut stream, "2.0.0", "2.0.0").await;
    let (status, _) = app.call(Method::PATCH, &format!("/api/v1/clusters/{id}"), Some(&owner.access), Some(json!({ "labels": { "ring": "nightly" } }))).await;
    assert_eq!(status, StatusCode::OK);
    // A whole-day window two days from now (UTC): closed today.
    use chrono::Datelike;
    let day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][(chrono::Utc::now().weekday().num_days_from_monday() as usize + 2) % 7];
    let policy = json!({ "name": "nights", "selector": "ring=nightly", "windows": [{ "days": [day], "start": "00:00", "end": "00:00" }] });
    let (status, policy) = app.post("/api/v1/upgrade-policies", &owner.access, policy).await;
    assert_eq!(status, StatusCode::CREATED, "{policy}");
    let (status, started) = app.post("/api/v1/rollouts", &owner.access, json!({ "target_version": "2.1.0", "selector": "ring=nightly" })).await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let rollout = started["id"].as_str().unwrap();
    let waiting = rollout_until(&app, &owner, rollout, "waiting for the window", |r| r["clusters"][0]["message"].as_str().is_some_and(|m| !m.is_empty())).await;
    let message = waiting["clusters"][0]["message"].as_str().unwrap();
    assert!(message.starts_with("waiting for a maintenance window of policy \"nights\" (next: "), "{message}");
    assert_eq!(waiting["clusters"][0]["phase"], "pending");
    assert!(commands_of(&app, &owner, &id).await.is_empty(), "nothing sent outside the window");
    // No window: any time.
    let pid = policy["id"].as_str().unwrap();
    let (status, body) = app
        .call(Method::PUT, &format!("/api/v1/upgrade-policies/{pid}"), Some(&owner.access), Some(json!({ "name": "nights", "selector": "ring=nightly" })))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    rollout_until(&app, &owner, rollout, "the upgrade starts", |r| r["clusters"][0]["phase"] == "control_plane").await;
    assert_eq!(commands_of(&app, &owner, &id).await, ["set-control-plane-version"]);
}

/// The pods an agent's data-plane restart could not restart safely are shown on the cluster's
/// run as it listed them, and the step goes on (they do not fail it).
async fn pods_the_restart_left_alone_are_shown_on_the_clusters_run(engine: Engine) {
    use meshfleet_agent_protocol::v1::{self, agent_message::Body};
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.yaml");
    std::fs::write(&catalog, "releases:\n- {version: 2.0.0, released_on: 2026-11-01}\n- {version: 2.1.0, released_on: 2026-12-01}\n").unwrap();
    let app = TestApp::spawn_with(TestDb::new(engine).await, |c| c.release_catalog = Some(catalog.clone())).await;
    let owner = app.owner("ada@example.com").await;
    let (_, agent) = crate::gateway::registered(&app, &owner, "one").await;
    let mut stream = crate::gateway::Stream::open(&app, &agent).await.unwrap();
    report(&mut stream, "2.0.0", "2.0.0").await;
    let request = json!({ "target_version": "2.1.0", "settings": { "verify_seconds": 1 } });
    let (status, started) = app.post("/api/v1/rollouts", &owner.access, request).await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let id = started["id"].as_str().unwrap().to_owned();
    let attention = json!([
        { "namespace": "shop", "pod": "debug", "kind": "Pod", "reason": "a bare pod (no controller): recreate it to get the new proxy" },
        { "namespace": "shop", "pod": "db-0", "kind": "StatefulSet", "reason": "StatefulSet db updates OnDelete: delete its pods one at a time" },
    ]);
    // Commands that arrive while the stream waits for an acknowledgement are kept for their turn.
    let mut arrived = std::collections::VecDeque::new();
    for (kind, output) in
        [("set-control-plane-version", json!({})), ("restart-workloads", json!({ "restarted": [], "skipped": [], "needs_attention": attention }))]
    {
        let command = match arrived.pop_front() {
            Some(c) => c,
            None => stream.command().await,
        };
        assert_eq!(command.kind, kind);
        let result = v1::CommandResult {
            command_id: command.id,
            state: v1::CommandState::Succeeded as i32,
            message: "done".into(),
            output_json: output.to_string(),
            progress_percent: 100,
        };
        let seq = stream.report(Body::CommandResult(result)).await;
        arrived.extend(stream.acked(seq).await);
    }
    let done = rollout_until(&app, &owner, &id, "the rollout completes", |r| r["state"] == "completed").await;
    assert_eq!(phases(&done), [("one".to_owned(), "done".to_owned())], "{done}");
    assert_eq!(done["clusters"][0]["needs_attention"], attention, "{done}");
}
