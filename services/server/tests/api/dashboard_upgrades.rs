//! The Upgrades page in real headless Chromium, over the demo fleet simulator: someone signs
//! up, sees how far behind each cluster is (and why its newest release is blocked), previews
//! a rollout's plan and starts it through the form, pauses and resumes it with the buttons, and
//! watches it complete without a reload, the gates' measured values beside each baseline; a
//! viewer sees no button and the API refuses the forms' posts. On both engines, the page shows
//! one organization's clusters and rollouts, and another organization's rollout is not found.

use std::time::Duration;

use fantoccini::Locator;
use reqwest::Method;
use serde_json::json;

use crate::dashboard::{browser, viewer_of, Browser};
use crate::helpers::{Engine, TestApp, TestDb, PASSWORD};

/// 0.2.0 any agent can carry out; 0.3.0 needs an agent newer than the simulator's.
const CATALOG: &str = "releases:\n- {version: 0.2.0, released_on: 2026-12-01}\n- {version: 0.3.0, released_on: 2026-12-02, min_agent_version: 9.0.0}\n";

/// Clicks the submit button `css` and accepts the confirmation it asks for, which must say `want`.
async fn confirm(b: &Browser, css: &str, want: &str) {
    b.click(css).await;
    for _ in 0..50 {
        if let Ok(text) = b.client.get_alert_text().await {
            assert!(text.contains(want), "{css} asks {text:?}");
            b.client.accept_alert().await.unwrap();
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} asked for no confirmation");
}

/// Clicks a rollout's `action` button, waits for the page to reload (as the form does once the
/// API took the change) and to show `want`. The job may save a step between the API's read and
/// write of the same rollout; the API then answers 409 "rollout-changed" (shown in the form, no
/// reload) and the click is made again, as a person would.
async fn steer(b: &Browser, action: &str, want: &str) {
    let state = "#rollouts article[data-rollout] [data-rollout-state]";
    for _ in 0..3 {
        b.client.execute("window.__steer = true", vec![]).await.unwrap();
        b.click(&format!("#rollouts article[data-rollout] form[data-api$='/{action}'] button")).await;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            // Mid-navigation the script may not run: not reloaded yet.
            if b.client.execute("return window.__steer === undefined && document.readyState === 'complete'", vec![]).await.ok() == Some(json!(true)) {
                assert!(b.wait_text(state, want, Duration::from_secs(5)).await, "{action}: the rollout never showed {want}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let error = b.text(&format!("#rollouts form[data-api$='/{action}'] .form-error")).await;
        assert!(error.contains("moved on"), "{action}: no reload and no conflict: {error:?}");
    }
    panic!("{action} kept meeting a changed rollout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_previews_starts_and_steers_a_rollout_from_the_dashboard() {
    let Some(b) = browser().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.yaml");
    std::fs::write(&catalog, CATALOG).unwrap();
    let app = TestApp::spawn_with(TestDb::new(Engine::Sqlite).await, |c| c.release_catalog = Some(catalog.clone())).await;
    let base = app.base.clone();

    // Sign up on the page, then run two simulated clusters and one without an agent.
    b.client.goto(&format!("{base}/signup")).await.unwrap();
    b.fill("#email", "ada@example.com").await;
    b.fill("#password", PASSWORD).await;
    b.fill("#organization", "acme").await;
    b.click("button[type=submit]").await;
    b.wait_url("/fleet").await;
    let owner = app.login("ada@example.com").await;
    app.create_cluster(&owner, "idle", json!({})).await;
    let _fleet = crate::rollouts::fleet(&app, "web", 2, false, dir.path());
    crate::rollouts::connected(&app, &owner, "web", 2).await;

    // Versions behind: each at 0.1.0, two releases behind, the newest blocked by its agent.
    b.click("nav a[href='/upgrades']").await;
    b.wait_url("/upgrades").await;
    assert!(b.wait_text("#versions", "2 of 3 clusters can be upgraded", Duration::from_secs(5)).await, "{}", b.text("#versions").await);
    let row = b.text("#versions tr[data-versions='web-0000']").await;
    for want in ["0.1.0", "stable", "0.3.0", "2", "its agent runs 0.1.0; the upgrade needs agent 9.0.0 or newer", "defaults"] {
        assert!(row.contains(want), "{want} missing from {row}");
    }
    assert!(b.text("#versions tr[data-versions='idle']").await.contains("not reported yet"));
    assert!(b.text("#rollouts").await.contains("No rollout yet"));
    b.assert_clean("the upgrades page").await;

    // The plan preview: a canary wave, then the rest; the agentless cluster is left out.
    b.client.find(Locator::Css("#target-version option[value='0.2.0']")).await.unwrap().click().await.unwrap();
    for (field, value) in [
        ("#canary-count", "1"),
        ("#batch-percent", "100"),
        ("#max-concurrent", "2"),
        ("#verify-seconds", "3"),
        ("#soak-seconds", "1"),
        ("#max-drop", "10"),
        ("#max-p99", "10000"),
    ] {
        b.fill(field, value).await;
    }
    b.click("#new-rollout button[data-preview]").await;
    assert!(
        b.wait_text("#new-rollout output.plan", "2 clusters to 0.2.0 in 2 waves; 1 left out.", Duration::from_secs(5)).await,
        "{}",
        b.text("#new-rollout output.plan").await
    );
    assert_eq!(b.text("#new-rollout [data-plan-wave='0']").await, "canary: web-0000 (0.1.0 → 0.2.0)");
    assert_eq!(b.text("#new-rollout [data-plan-wave='1']").await, "batch: web-0001 (0.1.0 → 0.2.0)");
    assert_eq!(b.text("#new-rollout [data-plan-skipped='idle']").await, "idle: its control plane has not reported a version");
    assert!(b.client.find_all(Locator::Css("#rollouts article[data-rollout]")).await.unwrap().is_empty(), "the preview started something");
    // A bad setting is refused with the field named, and nothing starts.
    b.fill("#batch-percent", "0").await;
    b.client.execute("document.getElementById('batch-percent').removeAttribute('min')", vec![]).await.unwrap();
    b.click("#new-rollout button[data-preview]").await;
    assert!(
        b.wait_text("#new-rollout .form-error", "settings.waves.batch_percent", Duration::from_secs(5)).await,
        "{}",
        b.text("#new-rollout .form-error").await
    );
    b.fill("#batch-percent", "100").await;
    b.screenshot("upgrades-preview").await;

    // Started through the form; paused and resumed with the buttons.
    confirm(&b, "#new-rollout button[data-start]", "Start this rollout now?").await;
    assert!(b.wait_text("#rollouts article[data-rollout] [data-rollout-state]", "running", Duration::from_secs(10)).await, "the rollout is not shown running");
    assert!(b.text("#rollouts article[data-rollout]").await.contains("Started") && b.text("#rollouts").await.contains("by ada@example.com"));
    steer(&b, "pause", "paused").await;
    assert!(b.text("#rollouts [data-rollout-reason]").await.contains("paused by"));
    assert!(b.client.find_all(Locator::Css("#rollouts form[data-api$='/pause']")).await.unwrap().is_empty(), "a paused rollout offers pause");
    b.screenshot("upgrades-paused").await;
    steer(&b, "resume", "running").await;

    // The rest happens live: each cluster's phase moves on and the rollout completes.
    b.client.execute("window.__sameDocument = true", vec![]).await.unwrap();
    assert!(
        b.wait_text("#rollouts article[data-rollout] [data-rollout-state]", "completed", Duration::from_secs(60)).await,
        "the rollout never showed completed: {}",
        b.text("#rollouts").await
    );
    assert_eq!(b.client.execute("return window.__sameDocument === true", vec![]).await.unwrap(), json!(true), "the page reloaded");
    for name in ["web-0000", "web-0001"] {
        let run = format!("#rollouts tr[data-run='{name}']");
        assert_eq!(b.client.find(Locator::Css(&run)).await.unwrap().attr("data-phase").await.unwrap().as_deref(), Some("done"));
        let (baseline, measured) = (b.text(&format!("{run} [data-baseline]")).await, b.text(&format!("{run} [data-measured]")).await);
        assert!(baseline.contains('%') && measured.contains('%') && measured.contains("requests"), "{name}: {baseline} / {measured}");
        assert!(b.text(&format!("{run} [data-message]")).await.contains("at 0.2.0; gates passed"));
    }
    assert!(b.text("#rollouts [data-done]").await.contains("2 of 2"));
    assert!(b.text("#rollouts").await.contains("idle: its control plane has not reported a version"), "the left-out cluster is not listed");
    assert!(b.wait_text("#versions tr[data-versions='web-0000']", "0.2.0", Duration::from_secs(5)).await);
    assert_eq!(b.client.find(Locator::Css("#versions tr[data-versions='web-0000']")).await.unwrap().attr("data-behind").await.unwrap().as_deref(), Some("1"));
    assert!(b.client.find_all(Locator::Css("#rollouts article form[data-api*='/rollouts/']")).await.unwrap().is_empty(), "a finished rollout offers actions");
    b.screenshot("upgrades-completed").await;
    b.assert_clean("the upgrades page after a rollout").await;

    // A viewer reads it all and can change none of it; the API refuses what the forms post.
    let (_, rollouts) = app.get("/api/v1/rollouts", &owner.access).await;
    let id = rollouts[0]["id"].as_str().unwrap().to_owned();
    let cluster = rollouts[0]["clusters"][0]["id"].as_str().unwrap().to_owned();
    viewer_of(&app, &owner.org, "vic@example.com").await;
    b.log_out().await;
    b.log_in(&base, "vic@example.com").await;
    b.assert_read_only(&base, "/upgrades").await;
    assert!(b.text("#rollouts").await.contains("completed") && b.text("#versions").await.contains("web-0001"));
    b.assert_read_only(&base, &format!("/upgrades/rollouts/{id}")).await;
    assert!(b.text("#live [data-rollout-state]").await.contains("completed"));
    b.client.close().await.unwrap();

    let vic = app.dashboard_session("vic@example.com").await;
    let request = json!({ "target_version": "0.2.0" });
    for path in [
        "/api/v1/rollouts".to_owned(),
        "/api/v1/rollouts/plan".to_owned(),
        format!("/api/v1/rollouts/{id}/pause"),
        format!("/api/v1/rollouts/{id}/abort"),
        format!("/api/v1/rollouts/{id}/clusters/{cluster}/retry"),
    ] {
        let resp =
            app.client.post(format!("{}{path}", app.base)).header("cookie", &vic.cookie).header("x-csrf-token", &vic.csrf).json(&request).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 403, "{path}");
    }
}

crate::on_both_engines!(upgrades_page_shows_one_organization);

/// The page reads through the organization's store functions on both engines: its clusters'
/// versions and policies, its rollout with the cluster left out and why, the abort button's
/// confirmation; another organization sees none of it and gets not-found for its rollout.
async fn upgrades_page_shows_one_organization(engine: Engine) {
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
    app.owner("eve@example.com").await;
    let mut streams = Vec::new();
    for name in ["steady", "held"] {
        let (id, agent) = crate::gateway::registered(&app, &owner, name).await;
        let mut stream = crate::gateway::Stream::open(&app, &agent).await.unwrap();
        crate::rollouts::report(&mut stream, "2.0.0", "2.0.0").await;
        streams.push(stream);
        let (status, _) = app.call(Method::PATCH, &format!("/api/v1/clusters/{id}"), Some(&owner.access), Some(json!({ "labels": { "ring": name } }))).await;
        assert_eq!(status.as_u16(), 200);
    }
    let policy = json!({ "name": "hold <fast>", "selector": "ring=held", "pinned_version": "2.0.0", "excluded": true });
    let (status, body) = app.post("/api/v1/upgrade-policies", &owner.access, policy).await;
    assert_eq!(status.as_u16(), 201, "{body}");
    // The agents do not answer commands: the cluster stays in its control-plane step.
    let (status, rollout) = app.post("/api/v1/rollouts", &owner.access, json!({ "target_version": "2.1.0" })).await;
    assert_eq!(status.as_u16(), 201, "{rollout}");
    let id = rollout["id"].as_str().unwrap();

    let mine = app.dashboard_session("ada@example.com").await;
    let page = app.page(&mine.cookie, "/upgrades").await;
    for want in [
        "data-behind-count=\"1\">1</strong> of 2 clusters can be upgraded".to_owned(),
        "data-versions=\"steady\" data-behind=\"1\"".to_owned(),
        "data-versions=\"held\" data-behind=\"0\"".to_owned(),
        "hold &lt;fast&gt;".to_owned(),
        "pinned to 2.0.0".to_owned(),
        "excluded from rollouts".to_owned(),
        format!("data-rollout=\"{id}\" data-state=\"running\""),
        "data-run=\"steady\"".to_owned(),
        "held</a>: its upgrade policy excludes it".to_owned(),
        "Abort the rollout?".to_owned(),
        "data-live=\"/ui/live?view=upgrades".to_owned(),
        "<option value=\"2.1.0\">".to_owned(),
    ] {
        assert!(page.contains(&want), "{want} missing from /upgrades: {page}");
    }
    assert!(!page.contains("hold <fast>"), "a policy name is not escaped");
    let one = app.page(&mine.cookie, &format!("/upgrades/rollouts/{id}")).await;
    assert!(one.contains(&format!("data-rollout=\"{id}\"")) && one.contains(&format!("view=rollout&amp;rollout={id}")), "{one}");

    let theirs = app.dashboard_session("eve@example.com").await;
    let page = app.page(&theirs.cookie, "/upgrades").await;
    assert!(page.contains("No cluster yet.") && page.contains("No rollout yet."), "{page}");
    for leaked in ["steady", "held", id] {
        assert!(!page.contains(leaked), "{leaked} of another organization on /upgrades");
    }
    for path in [format!("/upgrades/rollouts/{id}"), "/upgrades/rollouts/not-an-id".to_owned()] {
        let resp = app.client.get(format!("{}{path}", app.base)).header("cookie", &theirs.cookie).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 404, "{path}");
        assert!(!resp.text().await.unwrap().contains("steady"), "{path}");
    }
}
