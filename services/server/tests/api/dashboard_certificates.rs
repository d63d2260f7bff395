//! The certificates page in real headless Chromium: an admin creates the trust anchor, starts a
//! rotation, pauses, resumes and aborts it, each after a confirmation, and watches the phase
//! change without a reload; a viewer sees no button and the API refuses the forms' posts. On
//! both engines, the page shows one organization's anchors, rotation and issuers.

use std::time::Duration;

use fantoccini::Locator;
use serde_json::json;

use crate::dashboard::{browser, viewer_of, Browser};
use crate::helpers::{Engine, TestApp};

const ROTATIONS: &str = "/api/v1/trust-anchors/rotations";

/// Clicks the button of `form` and accepts the confirmation it asks for, which must say `want`.
async fn confirm(b: &Browser, form: &str, want: &str) {
    b.click(&format!("{form} button[type=submit]")).await;
    for _ in 0..50 {
        if let Ok(text) = b.client.get_alert_text().await {
            assert!(text.contains(want), "{form} asks {text:?}");
            b.client.accept_alert().await.unwrap();
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{form} asked for no confirmation");
}

/// Confirms `form`, then waits until `css` shows `want`: once, since the job and an admin's
/// change never overwrite each other.
async fn confirm_then(b: &Browser, form: &str, question: &str, css: &str, want: &str) {
    confirm(b, form, question).await;
    assert!(b.wait_text(css, want, Duration::from_secs(5)).await, "{css} never showed {want} after {form}");
}

/// Waits until nothing matches `css`.
async fn wait_gone(b: &Browser, css: &str, within: Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < within {
        if b.client.find_all(Locator::Css(css)).await.unwrap().is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_runs_a_trust_anchor_rotation_from_the_dashboard() {
    let Some(b) = browser().await else { return };
    let app = TestApp::spawn(Engine::Sqlite).await;
    let base = app.base.clone();
    let owner = app.owner("ada@example.com").await;
    app.create_cluster(&owner, "edge-1", json!({})).await;

    // No anchor yet: the page offers to create one, and no rotation.
    b.log_in(&base, "ada@example.com").await;
    b.click("nav a[href='/certificates']").await;
    b.wait_url("/certificates").await;
    assert!(b.text("#anchors").await.contains("No trust anchor yet"));
    assert!(b.client.find_all(Locator::Css(&format!("form[data-api='{ROTATIONS}']"))).await.unwrap().is_empty(), "a rotation is offered without an anchor");
    assert!(b.text("#issuers tr[data-issuer='edge-1']").await.contains("not signed by the service"));
    confirm(&b, "form[data-api='/api/v1/trust-anchors']", "Generate a new trust anchor").await;
    assert!(b.wait_text("#anchors tr[data-anchor]", "active", Duration::from_secs(5)).await, "the new anchor is not shown active");
    let anchor = b.text("#anchors tr[data-anchor]").await;
    assert!(anchor.contains("meshfleet trust anchor") && anchor.contains("expires in 36"), "{anchor}");
    let full = b.client.find(Locator::Css("#anchors tr[data-anchor] code.fingerprint")).await.unwrap().attr("title").await.unwrap().unwrap();
    assert_eq!(full.len(), 64, "the whole fingerprint is in the title: {full}");
    assert!(b.client.find_all(Locator::Css("form[data-api='/api/v1/trust-anchors']")).await.unwrap().is_empty(), "a second anchor is offered");
    b.assert_clean("the certificates page with an anchor").await;

    // A rotation: distribute, with the cluster (no agent) waiting for it, shown live.
    b.client.execute("window.__sameDocument = true", vec![]).await.unwrap();
    confirm(&b, &format!("form[data-api='{ROTATIONS}']"), "rotate every cluster").await;
    assert!(b.wait_text("#rotation .stepper [aria-current='step']", "distribute", Duration::from_secs(5)).await, "the phase is not shown");
    assert!(b.wait_text("#rotation tr[data-progress='edge-1']", "waiting for agent", Duration::from_secs(10)).await, "the cluster is not listed");
    assert!(b.text("#rotation tr[data-progress='edge-1']").await.contains("0 / 0"));
    assert!(b.text("#rotation").await.contains("by ada@example.com"), "the admin who started it is not named");
    assert!(b.wait_text("#anchors", "next", Duration::from_secs(5)).await, "the new anchor is not shown next");
    assert!(b.client.find_all(Locator::Css(&format!("form[data-api='{ROTATIONS}']"))).await.unwrap().is_empty(), "a second rotation is offered");
    b.screenshot("certificates-rotating").await;
    b.assert_clean("the certificates page during a rotation").await;

    // Paused, then resumed.
    confirm_then(&b, "#rotation form[data-api$='/pause']", "Pause the rotation", "#rotation [data-rotation-paused]", "paused").await;
    assert!(b.client.find_all(Locator::Css("#rotation form[data-api$='/pause']")).await.unwrap().is_empty());
    confirm(&b, "#rotation form[data-api$='/resume']", "Resume the rotation").await;
    assert!(wait_gone(&b, "#rotation [data-rotation-paused]", Duration::from_secs(5)).await, "the rotation is still shown paused");
    assert_eq!(b.client.find_all(Locator::Css("#rotation form[data-api$='/pause']")).await.unwrap().len(), 1);

    // Aborted: it rolls back, and once the agentless cluster is excluded it ends aborted, the
    // new anchor set aside and the old one active again. The live fragment shows the end.
    confirm(&b, "#rotation form[data-api$='/abort']", "Abort the rotation").await;
    assert!(b.wait_text("#rotation .stepper [aria-current='step']", "rollback distribute", Duration::from_secs(5)).await, "the rollback is not shown");
    assert!(b.client.find_all(Locator::Css("#rotation form[data-api$='/abort']")).await.unwrap().is_empty(), "abort is offered twice");
    b.client.execute("window.__sameDocument = true", vec![]).await.unwrap();
    let exclude = "#rotation tr[data-progress='edge-1'] form[data-api$='/exclude']";
    confirm_then(&b, exclude, "Exclude edge-1", "#rotation .stepper [aria-current='step']", "aborted").await;
    assert!(b.wait_text("#anchors", "inactive", Duration::from_secs(5)).await);
    let states: Vec<String> = {
        let mut out = Vec::new();
        for row in b.client.find_all(Locator::Css("#anchors tr[data-anchor]")).await.unwrap() {
            out.push(row.attr("data-state").await.unwrap().unwrap());
        }
        out
    };
    assert_eq!(states, ["active", "inactive"], "oldest first: the old anchor active again, the new one set aside");
    assert!(b.client.find_all(Locator::Css("#rotation form[data-api*='/rotations/']")).await.unwrap().is_empty(), "a finished rotation offers actions");
    assert_eq!(b.client.find_all(Locator::Css(&format!("form[data-api='{ROTATIONS}']"))).await.unwrap().len(), 1, "no new rotation is offered");
    b.screenshot("certificates-aborted").await;
    b.assert_clean("the certificates page after an abort").await;

    // A viewer reads it all and can change none of it; the API refuses what the forms post.
    viewer_of(&app, &owner.org, "vic@example.com").await;
    b.log_out().await;
    b.log_in(&base, "vic@example.com").await;
    b.assert_read_only(&base, "/certificates").await;
    assert!(b.text("#rotation").await.contains("aborted") && b.text("#anchors").await.contains("inactive"));
    b.screenshot("certificates-viewer").await;
    b.client.close().await.unwrap();

    let (_, rotations) = app.get(ROTATIONS, &owner.access).await;
    let id = rotations[0]["id"].as_str().unwrap().to_owned();
    let vic = app.dashboard_session("vic@example.com").await;
    for path in ["/api/v1/trust-anchors".to_owned(), ROTATIONS.to_owned(), format!("{ROTATIONS}/{id}/pause"), format!("{ROTATIONS}/{id}/abort")] {
        let resp = app
            .client
            .post(format!("{}{path}", app.base))
            .header("cookie", &vic.cookie)
            .header("x-csrf-token", &vic.csrf)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 403, "{path}");
    }
}

crate::on_both_engines!(certificates_page_shows_one_organization);

/// The page reads through the organization's store functions on both engines: its anchor, its
/// rotation and its cluster's reported issuer; another organization sees none of them.
async fn certificates_page_shows_one_organization(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    app.owner("eve@example.com").await;
    crate::health::troubled(&app, &owner).await;
    let (status, anchor) = app.post("/api/v1/trust-anchors", &owner.access, json!({ "common_name": "acme <root>" })).await;
    assert_eq!(status.as_u16(), 201, "{anchor}");
    let (status, rotation) = app.post(ROTATIONS, &owner.access, json!({})).await;
    assert_eq!(status.as_u16(), 201, "{rotation}");

    let mine = app.dashboard_session("ada@example.com").await;
    let page = app.page(&mine.cookie, "/certificates").await;
    let fingerprint = anchor["fingerprint"].as_str().unwrap();
    for want in [
        format!("title=\"{fingerprint}\""),
        "acme &lt;root&gt;".to_owned(),
        "data-state=\"active\"".to_owned(),
        "data-state=\"next\"".to_owned(),
        format!("data-rotation=\"{}\"", rotation["id"].as_str().unwrap()),
        "data-phase=\"distribute\"".to_owned(),
        "data-issuer=\"troubled\"".to_owned(),
        "not signed by the service".to_owned(),
        "CN=issuer".to_owned(),
        "data-live=\"/ui/live?view=certificates".to_owned(),
    ] {
        assert!(page.contains(&want), "{want} missing from /certificates");
    }
    assert!(!page.contains("acme <root>"), "a subject is not escaped");

    let theirs = app.dashboard_session("eve@example.com").await;
    let page = app.page(&theirs.cookie, "/certificates").await;
    assert!(page.contains("No trust anchor yet") && page.contains("No rotation yet.") && page.contains("No cluster yet."), "{page}");
    for leaked in [fingerprint, "acme", "troubled"] {
        assert!(!page.contains(leaked), "{leaked} of another organization on /certificates");
    }
}
