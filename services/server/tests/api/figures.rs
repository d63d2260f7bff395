//! The dashboard's figures, as a user reads them: rates over the time the data covers,
//! charts of finished minutes only with a success axis fitted to the data, and fleet health
//! that does not flip around its threshold.

use crate::gateway::{metrics, pod, registered, snapshot, Stream};
use crate::helpers::{Engine, TestApp};

crate::on_both_engines!(young_workloads_show_their_real_rate_and_charts_end_at_the_last_finished_minute, fleet_health_has_hysteresis);

/// Moves the server's clock to 30 s into a minute, so a test has half a minute before the
/// running minute finishes.
fn mid_minute(app: &TestApp) -> i64 {
    let into = app.state.clock.now_ms().rem_euclid(60_000);
    app.state.clock.advance(std::time::Duration::from_millis(((90_000 - into) % 60_000) as u64));
    let now = app.state.clock.now_ms();
    now - now.rem_euclid(60_000)
}

async fn young_workloads_show_their_real_rate_and_charts_end_at_the_last_finished_minute(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let minute = mid_minute(&app);
    let owner = app.owner("ada@example.com").await;
    let (cluster, id) = registered(&app, &owner, "prod-eu-1").await;
    let mut stream = Stream::open(&app, &id).await.unwrap();
    stream.report(snapshot(vec![pod("shop", "web-1", "Deployment/web", "0.1.0")])).await;
    // The workload appeared a minute ago: 600 requests in the finished minute (10/s), and 30
    // in the half minute running so far.
    stream.report(metrics(minute - 60_000, 600, 0)).await;
    let seq = stream.report(metrics(minute, 30, 0)).await;
    stream.acked(seq).await;
    let session = app.dashboard_session("ada@example.com").await;
    let html = app.page(&session.cookie, &format!("/clusters/{cluster}")).await;

    // 630 requests over the 90 s the data covers is 7/s; over 300 s it would read 2.1/s.
    let row = html.split("Deployment/web").nth(1).expect("the workload row");
    let rate: f64 = row.split("<td>").nth(1).unwrap().split('<').next().unwrap().parse().unwrap();
    assert!((6.0..=8.0).contains(&rate), "requests/s {rate} in {row}");
    // The request chart has the finished minute only: no half-empty minute that reads as a drop.
    assert!(html.contains("Requests per second, 1 points, from 0 to 10.0 req/s"), "{html}");
}

async fn fleet_health_has_hysteresis(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let minute = mid_minute(&app);
    let owner = app.owner("ada@example.com").await;
    let (_, id) = registered(&app, &owner, "prod-eu-1").await;
    let mut stream = Stream::open(&app, &id).await.unwrap();
    stream.report(snapshot(vec![pod("shop", "web-1", "Deployment/web", "0.1.0")])).await;
    let session = app.dashboard_session("ada@example.com").await;
    let org = owner.org.parse().unwrap();
    let mut health_after = async |start: i64, requests: u64, failures: u64| {
        let seq = stream.report(metrics(start, requests, failures)).await;
        stream.acked(seq).await;
        app.state.fleet_cache.invalidate(org);
        let html = app.page(&session.cookie, "/fleet").await;
        let row = html.split("data-cluster=\"prod-eu-1\"").nth(1).expect("the cluster row").to_owned();
        let badge = row.split("badge health-").nth(1).unwrap().split('"').next().unwrap().to_owned();
        badge
    };
    // 98.9% over the last minutes: degraded.
    assert_eq!(health_after(minute - 180_000, 1_000, 11).await, "degraded");
    // 99.2%: above the 99% that made it degraded, but not clearly: it stays degraded.
    assert_eq!(health_after(minute - 120_000, 1_000, 5).await, "degraded");
    // 99.7%: recovered.
    assert_eq!(health_after(minute - 60_000, 4_000, 0).await, "healthy");
}
