//! The dashboard's alerting pages in real headless Chromium: a firing alert appears on the fleet
//! overview and on the cluster page without a reload and is listed on the alerts page; a silence
//! is made with the form (a bad regular expression is explained), mutes the alert, and is
//! expired yet still listed; a channel's delivery log shows a test event a real receiver got, and
//! its redelivery; viewers see no mutating controls; no console errors. On both engines, the
//! pages show one organization's alerts, silences and channels only, escaped.

use std::time::Duration;

use fantoccini::Locator;
use serde_json::json;

use crate::alert_delivery::{create_channel, Receiver};
use crate::alerts::{alerts, by_rule, spawn};
use crate::dashboard::{browser, viewer_of};
use crate::health::troubled;
use crate::helpers::{rfc3339, Engine};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_show_live_and_silences_and_channels_are_run_from_the_dashboard() {
    let Some(b) = browser().await else { return };
    let app = spawn(Engine::Sqlite).await;
    let base = app.base.clone();
    let owner = app.owner("ada@example.com").await;
    app.create_cluster(&owner, "calm", json!({})).await;

    // The fleet is open when an alert starts firing: it appears there without a reload.
    b.log_in(&base, "ada@example.com").await;
    assert_eq!(b.text("#live [data-firing-count]").await, "0");
    b.client.execute("window.__sameDocument = true", vec![]).await.unwrap();
    crate::alerts::without_workload_objectives(&app, &owner).await;
    let cluster = troubled(&app, &owner).await;
    assert!(b.wait_text("#live .firing", "certificate_expiry", Duration::from_secs(10)).await, "the firing alert never showed on the fleet");
    assert_eq!(b.text("#live [data-firing-count]").await, "1");
    assert_eq!(b.client.execute("return window.__sameDocument === true", vec![]).await.unwrap(), json!(true), "the fleet reloaded");
    b.screenshot("fleet-firing").await;
    b.assert_clean("the fleet with a firing alert").await;

    // On the cluster page the control plane's alert is pending (not listed as firing) until its
    // 30 s have passed; then it appears, again without a reload.
    b.client.goto(&format!("{base}/clusters/{cluster}")).await.unwrap();
    assert!(b.wait_text("#live .firing", "certificate_expiry", Duration::from_secs(5)).await);
    assert!(!b.text("#live .firing").await.contains("control_plane"));
    b.client.execute("window.__sameDocument = true", vec![]).await.unwrap();
    app.state.clock.advance(Duration::from_secs(31));
    assert!(b.wait_text("#live .firing", "control_plane", Duration::from_secs(10)).await, "the control plane's alert never showed on the cluster page");
    assert_eq!(b.client.execute("return window.__sameDocument === true", vec![]).await.unwrap(), json!(true), "the cluster page reloaded");
    b.screenshot("cluster-firing").await;
    b.assert_clean("the cluster page with firing alerts").await;

    // The alerts page: firing and pending, each with its cluster's page a click away.
    b.client.goto(&format!("{base}/alerts")).await.unwrap();
    let open = b.text("#live").await;
    for want in ["2 firing, 2 pending", "certificate_expiry", "control_plane", "success_rate", "proxy_versions", "troubled", "warning"] {
        assert!(open.contains(want), "{want} missing from the open alerts: {open}");
    }
    b.click(&format!("#live tr[data-alert='certificate_expiry'] a[href='/clusters/{cluster}']")).await;
    b.wait_url(&format!("/clusters/{cluster}")).await;

    // A silence from the form: a bad regular expression is refused and the field named.
    b.client.goto(&format!("{base}/alerts")).await.unwrap();
    b.fill("#matcher-name", "alertname").await;
    b.client.find(Locator::Css("#matcher-op")).await.unwrap().select_by_value("=~").await.unwrap();
    b.fill("#matcher-value", "certificate_(expiry").await;
    b.fill("#silence-comment", "renewing the <b>issuer</b>").await;
    b.click("#silence-form button[type=submit]").await;
    assert!(b.wait_text("#silence-form .form-error", "matchers[0].value", Duration::from_secs(5)).await, "the API's error is not shown");
    b.screenshot("silence-refused").await;
    b.fill("#matcher-value", "certificate_.*").await;
    b.click("#silence-form [data-add-matcher]").await;
    b.fill("#silence-form [data-matcher]:nth-of-type(2) [data-part='name']", "cluster").await;
    b.fill("#silence-form [data-matcher]:nth-of-type(2) [data-part='value']", "troubled").await;
    b.click("#silence-form button[type=submit]").await;
    assert!(b.wait_text("#silences tr[data-silence]", "active", Duration::from_secs(5)).await, "the new silence is not listed");
    let row = b.text("#silences tr[data-silence]").await;
    for want in ["alertname =~ \"certificate_.*\"", "cluster = \"troubled\"", "renewing the <b>issuer</b>", "ada@example.com"] {
        assert!(row.contains(want), "{want} missing from the silence: {row}");
    }
    // It mutes the certificate's alert, and the page says so (the comment as text, not markup).
    assert!(b.wait_text("#live tr[data-alert='certificate_expiry'] .silenced-by", "renewing the <b>issuer</b>", Duration::from_secs(5)).await);
    let firing = alerts(&app, &owner, "?state=firing", |a| by_rule(a, "certificate_expiry").is_some()).await;
    assert_eq!(by_rule(&firing, "certificate_expiry").unwrap()["silenced_by"].as_array().unwrap().len(), 1);
    b.screenshot("alerts-silenced").await;
    b.assert_clean("the alerts page").await;

    // Expired, it stays listed and mutes nothing.
    b.click("#silences tr[data-silence] form[data-method='DELETE'] button").await;
    assert!(b.wait_text("#silences tr[data-silence]", "expired", Duration::from_secs(5)).await, "the expired silence is not listed");
    assert!(b.client.find_all(Locator::Css("#silences tr[data-silence] form")).await.unwrap().is_empty(), "an expired silence offers to expire it");
    assert!(b.client.find_all(Locator::Css("#live .silenced-by")).await.unwrap().is_empty(), "an expired silence still mutes");
    b.assert_clean("the alerts page after expiring").await;

    // A test event reaches a real receiver and shows in the channel's log; so does a redelivery.
    let receiver = Receiver::start(&[]).await;
    let (channel, secret) = create_channel(&app, &owner, &receiver.url).await;
    b.client.goto(&format!("{base}/channels")).await.unwrap();
    let card = format!("[data-channel='{channel}']");
    assert!(b.wait_text(&card, "Nothing sent yet", Duration::from_secs(5)).await);
    let shown = b.text(&card).await;
    assert!(shown.contains("on-call") && shown.contains("http://127.0.0.1") && shown.contains("enabled"), "{shown}");
    assert!(!shown.contains("/hook") && !shown.contains(&secret[6..]), "the receiver's URL or the secret shows: {shown}");
    b.click(&format!("{card} form[data-api$='/test'] button")).await;
    assert!(b.wait_text(&format!("{card} table.deliveries"), "receiver says hello", Duration::from_secs(10)).await, "the delivery never showed");
    assert_eq!(receiver.wait_for(1, Duration::from_secs(5)).await.len(), 1);
    assert_eq!(b.text(&format!("{card} [data-status-code]")).await, "200");
    b.click(&format!("{card} form[data-api$='/redeliver'] button")).await;
    receiver.wait_for(2, Duration::from_secs(10)).await;
    let mut attempts = 0;
    for _ in 0..100 {
        attempts = b.client.find_all(Locator::Css(&format!("{card} tr[data-attempt]"))).await.unwrap().len();
        if attempts == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(attempts, 2, "the redelivery is not in the log");
    b.screenshot("channels").await;
    b.assert_clean("the channels page").await;

    // A viewer reads it all and can change none of it.
    viewer_of(&app, &owner.org, "vic@example.com").await;
    b.log_out().await;
    b.log_in(&base, "vic@example.com").await;
    for path in ["/alerts".to_owned(), "/channels".to_owned(), "/fleet".to_owned(), format!("/clusters/{cluster}")] {
        b.assert_read_only(&base, &path).await;
    }
    b.client.goto(&format!("{base}/alerts")).await.unwrap();
    assert!(b.text("#live").await.contains("certificate_expiry") && b.text("#silences").await.contains("expired"));
    b.screenshot("alerts-viewer").await;
    b.client.close().await.unwrap();
}

crate::on_both_engines!(alert_pages_show_one_organization_escaped);

/// The pages read through the organization's store functions on both engines: another
/// organization sees none of the alerts, silences or channels, and user text is escaped.
async fn alert_pages_show_one_organization_escaped(engine: Engine) {
    let app = spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    app.owner("eve@example.com").await;
    let cluster = troubled(&app, &owner).await;
    alerts(&app, &owner, "?state=firing", |a| by_rule(a, "certificate_expiry").is_some()).await;
    let receiver = Receiver::start(&[]).await;
    create_channel(&app, &owner, &receiver.url).await;
    let silence = json!({
        "matchers": [{ "name": "cluster", "op": "=", "value": "troubled" }],
        "ends_at": rfc3339(app.state.clock.now_ms() + 3_600_000),
        "comment": "<script>alert(1)</script> upgrading",
    });
    let (status, body) = app.post("/api/v1/silences", &owner.access, silence).await;
    assert_eq!(status.as_u16(), 201, "{body}");

    let mine = app.dashboard_session("ada@example.com").await;
    let page = app.page(&mine.cookie, "/alerts").await;
    for want in ["data-alert=\"certificate_expiry\"", "troubled", "&lt;script&gt;alert(1)&lt;/script&gt; upgrading", "data-state=\"active\""] {
        assert!(page.contains(want), "{want} missing from /alerts");
    }
    assert!(!page.contains("<script>alert(1)"), "a comment is not escaped");
    assert!(app.page(&mine.cookie, "/channels").await.contains("on-call"));
    assert!(app.page(&mine.cookie, "/fleet").await.contains("data-firing-count=\"1\""));
    assert!(app.page(&mine.cookie, &format!("/clusters/{cluster}")).await.contains("data-alert=\"certificate_expiry\""));

    let theirs = app.dashboard_session("eve@example.com").await;
    let page = app.page(&theirs.cookie, "/alerts").await;
    assert!(page.contains("data-firing-count=\"0\"") && page.contains("No silences."), "{page}");
    for leaked in ["certificate_expiry", "troubled", "upgrading"] {
        assert!(!page.contains(leaked), "{leaked} of another organization on /alerts");
    }
    let page = app.page(&theirs.cookie, "/channels").await;
    assert!(page.contains("No alert channels yet") && !page.contains("on-call"), "{page}");
    let resp = app.client.get(format!("{}/clusters/{cluster}", app.base)).header("cookie", &theirs.cookie).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}
