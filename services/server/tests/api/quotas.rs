//! Per-cluster limits of the gateway: the message rate and the connection rate belong to the
//! cluster (a reconnect refills nothing), quotas on series, events per minute and bytes per
//! message kind refuse what exceeds them with a `Refused` the agent understands, each refusal
//! is counted in /metrics and shown on the cluster, one cluster's flood does not slow another,
//! and the metrics and events a cluster reported are read a page at a time.

use std::time::{Duration, Instant};

use meshfleet_agent_protocol::v1::{self, agent_message::Body, server_message};
use serde_json::Value;
use tonic::Code;

use crate::gateway::{eventually, metrics, registered, snapshot, Stream};
use crate::helpers::{Engine, Login, TestApp, TestDb};
use crate::on_both_engines;

impl Stream {
    /// Reads until the server acknowledges `seq`; returns the refusals seen meanwhile.
    async fn settled(&mut self, seq: u64) -> Vec<v1::Refused> {
        let mut refused = Vec::new();
        loop {
            match self.next().await.unwrap() {
                server_message::Body::Ack(a) if a.seq >= seq => return refused,
                server_message::Body::Refused(r) => refused.push(r),
                _ => {}
            }
        }
    }
}

fn workloads(start_ms: i64, names: &[&str]) -> Body {
    let Body::Metrics(mut m) = metrics(start_ms, 10, 0) else { unreachable!() };
    let template = m.workloads[0].clone();
    m.workloads = names.iter().map(|n| v1::WorkloadMetrics { workload: format!("Deployment/{n}"), ..template.clone() }).collect();
    Body::Metrics(m)
}

fn events(ids: &[&str], at: i64, message_len: usize) -> Body {
    Body::Events(v1::Events {
        events: ids
            .iter()
            .map(|id| v1::Event {
                id: (*id).into(),
                at_unix_ms: at,
                r#type: "Warning".into(),
                namespace: "shop".into(),
                object: "Pod/web-1".into(),
                reason: "BackOff".into(),
                message: "x".repeat(message_len),
            })
            .collect(),
    })
}

async fn refused_total(app: &TestApp, reason: &str) -> u64 {
    let text = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    let prefix = format!("meshfleet_gateway_refused_total{{reason=\"{reason}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |n| n.trim().parse().unwrap())
}

/// The cluster's finding for `reason`, once the gateway has written it (within a second).
async fn finding(app: &TestApp, owner: &Login, cluster: &str, reason: &str) -> Value {
    let path = format!("/api/v1/clusters/{cluster}");
    let find = || async { app.get(&path, &owner.access).await.1["throttled"].as_array().into_iter().flatten().find(|t| t["reason"] == reason).cloned() };
    assert!(eventually(|| async { find().await.is_some() }).await, "no {reason} finding on {}", app.get(&path, &owner.access).await.1);
    find().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_does_not_refill_the_message_bucket_and_reconnects_are_limited() {
    let db = TestDb::new(Engine::Sqlite).await;
    let app = TestApp::spawn_with(db, |c| {
        (c.gateway_rate_per_sec, c.gateway_rate_burst) = (0.01, 6.0);
        (c.gateway_connects_per_min, c.gateway_connects_burst) = (0.01, 3.0);
    })
    .await;
    let owner = app.owner("ada@example.com").await;
    let (cluster, id) = registered(&app, &owner, "c1").await;
    let (_, other_id) = registered(&app, &owner, "c2").await;

    // Hello does not count; four reports do.
    let mut first = Stream::open(&app, &id).await.unwrap();
    for _ in 0..4 {
        let seq = first.report(snapshot(vec![])).await;
        first.acked(seq).await;
    }
    drop(first);
    // A new stream of the same cluster has the two tokens left, not a fresh burst of six.
    let mut second = Stream::open(&app, &id).await.unwrap();
    for _ in 0..2 {
        let seq = second.report(snapshot(vec![])).await;
        second.acked(seq).await;
    }
    second.report(snapshot(vec![])).await;
    let status = second.ended().await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("messages per second"), "{status:?}");

    // Two connections spent; the third is the last of the burst, the fourth is refused.
    let _third = Stream::open(&app, &id).await.unwrap();
    let refused = Stream::open(&app, &id).await.err().expect("a fourth connection within the minute is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("retry in"), "{refused:?}");
    // Another cluster is not affected.
    let mut other = Stream::open(&app, &other_id).await.unwrap();
    let seq = other.report(snapshot(vec![])).await;
    other.acked(seq).await;

    assert_eq!(refused_total(&app, "rate_limited").await, 1);
    assert_eq!(refused_total(&app, "reconnects").await, 1);
    let f = finding(&app, &owner, &cluster, "reconnects").await;
    assert_eq!(f["refused"], 1, "{f}");
    assert!(f["since"].as_str().is_some_and(|s| s.ends_with('Z')), "{f}");
    finding(&app, &owner, &cluster, "rate_limited").await;
}

on_both_engines!(
    series_over_the_quota_are_refused_and_shown,
    events_over_the_minute_quota_are_refused,
    reports_over_their_kinds_byte_limit_are_refused,
    metrics_and_events_are_read_a_page_at_a_time
);

async fn series_over_the_quota_are_refused_and_shown(engine: Engine) {
    let db = TestDb::new(engine).await;
    let app = TestApp::spawn_with(db, |c| c.quota_series = 3).await;
    let owner = app.owner("ada@example.com").await;
    let (cluster, id) = registered(&app, &owner, "c1").await;
    let mut stream = Stream::open(&app, &id).await.unwrap();
    let minute = (app.state.clock.now_ms() / 60_000) * 60_000;

    let seq = stream.report(workloads(minute, &["a", "b"])).await;
    assert_eq!(stream.settled(seq).await, vec![]);
    // Known series always pass; one new series fits, two do not.
    let seq = stream.report(workloads(minute + 10_000, &["a", "c", "d", "e"])).await;
    let refused = stream.settled(seq).await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!((refused[0].seq, refused[0].reason.as_str(), refused[0].refused_items), (seq, "series", 2), "{refused:?}");
    assert!(refused[0].message.contains("quota of 3 series"), "{refused:?}");
    // Now full: a report of new series only is refused, one of known series is not.
    let seq = stream.report(workloads(minute + 20_000, &["f"])).await;
    assert_eq!(stream.settled(seq).await.len(), 1);
    let seq = stream.report(workloads(minute + 30_000, &["b", "c"])).await;
    assert_eq!(stream.settled(seq).await, vec![]);

    let (_, m) = app.get(&format!("/api/v1/clusters/{cluster}/metrics"), &owner.access).await;
    let mut stored: Vec<&str> = m["items"].as_array().unwrap().iter().map(|r| r["workload"].as_str().unwrap()).collect();
    stored.dedup();
    assert_eq!(stored, ["Deployment/a", "Deployment/b", "Deployment/c"], "{m}");
    assert_eq!(refused_total(&app, "series").await, 3);
    let f = finding(&app, &owner, &cluster, "series").await;
    assert!(eventually(|| async { finding(&app, &owner, &cluster, "series").await["refused"] == 3 }).await, "{f}");
    // The organization sees it on the cluster's page too.
    let session = app.dashboard_session("ada@example.com").await;
    let html = app.page(&session.cookie, &format!("/clusters/{cluster}")).await;
    assert!(html.contains("data-throttled=\"series\"") && html.contains("more workloads than its quota"), "{html}");
}

async fn events_over_the_minute_quota_are_refused(engine: Engine) {
    let db = TestDb::new(engine).await;
    let app = TestApp::spawn_with(db, |c| c.quota_events_per_min = 3).await;
    let owner = app.owner("ada@example.com").await;
    let (cluster, id) = registered(&app, &owner, "c1").await;
    let mut stream = Stream::open(&app, &id).await.unwrap();
    let now = app.state.clock.now_ms();

    let seq = stream.report(events(&["e1", "e2"], now, 10)).await;
    assert_eq!(stream.settled(seq).await, vec![]);
    let seq = stream.report(events(&["e3", "e4", "e5"], now, 10)).await;
    let refused = stream.settled(seq).await;
    assert_eq!(refused.iter().map(|r| (r.reason.as_str(), r.refused_items)).collect::<Vec<_>>(), [("events_per_minute", 2)], "{refused:?}");
    let seq = stream.report(events(&["e6"], now, 10)).await;
    assert_eq!(stream.settled(seq).await.len(), 1, "the minute's allowance is spent");
    // The stream goes on: other reports are still stored.
    let seq = stream.report(snapshot(vec![])).await;
    assert_eq!(stream.settled(seq).await, vec![]);

    let (_, ev) = app.get(&format!("/api/v1/clusters/{cluster}/events"), &owner.access).await;
    let mut ids: Vec<&str> = ev["items"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["e1", "e2", "e3"], "{ev}");
    assert_eq!(refused_total(&app, "events_per_minute").await, 3);
    assert_eq!(finding(&app, &owner, &cluster, "events_per_minute").await["reason"], "events_per_minute");
}

async fn reports_over_their_kinds_byte_limit_are_refused(engine: Engine) {
    let db = TestDb::new(engine).await;
    let app = TestApp::spawn_with(db, |c| c.quota_bytes = "events=2048".parse().unwrap()).await;
    let owner = app.owner("ada@example.com").await;
    let (cluster, id) = registered(&app, &owner, "c1").await;
    let mut stream = Stream::open(&app, &id).await.unwrap();
    let now = app.state.clock.now_ms();

    let big = stream.report(events(&["big"], now, 3000)).await;
    let small = stream.report(events(&["small"], now, 100)).await;
    // A metrics report of the same size is within its own kind's limit.
    let names: Vec<String> = (0..40).map(|i| format!("w{i:02}")).collect();
    let metrics_seq = stream.report(workloads((now / 60_000) * 60_000, &names.iter().map(String::as_str).collect::<Vec<_>>())).await;
    let refused = stream.settled(metrics_seq).await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!((refused[0].seq, refused[0].reason.as_str(), refused[0].refused_items), (big, "bytes", 0), "{refused:?}");
    assert!(refused[0].message.contains("2048"), "{refused:?}");
    assert!(small < metrics_seq);

    let (_, ev) = app.get(&format!("/api/v1/clusters/{cluster}/events"), &owner.access).await;
    assert_eq!(ev["items"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect::<Vec<_>>(), ["small"], "{ev}");
    let (_, m) = app.get(&format!("/api/v1/clusters/{cluster}/metrics"), &owner.access).await;
    assert_eq!(m["items"].as_array().unwrap().len(), 40, "{m}");
    assert_eq!(refused_total(&app, "bytes").await, 1);
    finding(&app, &owner, &cluster, "bytes").await;
}

async fn metrics_and_events_are_read_a_page_at_a_time(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let (cluster, id) = registered(&app, &owner, "c1").await;
    let mut stream = Stream::open(&app, &id).await.unwrap();
    let minute = (app.state.clock.now_ms() / 60_000) * 60_000;
    stream.report(workloads(minute - 60_000, &["a", "b", "c"])).await;
    stream.report(workloads(minute, &["a", "b", "c"])).await;
    for (i, id) in ["e1", "e2", "e3", "e4", "e5"].iter().enumerate() {
        stream.report(events(&[id], minute - 1000 * i as i64, 10)).await;
    }
    let seq = stream.report(events(&["e0"], minute - 3000, 10)).await;
    stream.acked(seq).await;

    let pages = |path: String, limit: u32| {
        let (app, owner) = (&app, &owner);
        async move {
            let (mut pages, mut cursor): (Vec<Vec<Value>>, Option<String>) = (Vec::new(), None);
            loop {
                let url = format!("{path}?limit={limit}{}", cursor.map(|c| format!("&cursor={c}")).unwrap_or_default());
                let (status, page) = app.get(&url, &owner.access).await;
                assert_eq!(status, 200, "{page}");
                pages.push(page["items"].as_array().unwrap().clone());
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => return pages,
                }
            }
        }
    };
    let metrics_path = format!("/api/v1/clusters/{cluster}/metrics");
    let got = pages(metrics_path.clone(), 4).await;
    assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [4, 2]);
    let keys: Vec<(String, String)> =
        got.concat().iter().map(|r| (r["workload"].as_str().unwrap().to_owned(), r["minute"].as_str().unwrap().to_owned())).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(keys, sorted, "in order, each row once");
    assert_eq!(keys[0].1, crate::helpers::rfc3339(minute - 60_000));

    let got = pages(format!("/api/v1/clusters/{cluster}/events"), 2).await;
    assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 2]);
    let ids: Vec<&str> = got.iter().flatten().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["e1", "e2", "e3", "e0", "e4", "e5"], "newest first; equal times by id");

    let (status, body) = app.get(&format!("{metrics_path}?cursor=nonsense"), &owner.access).await;
    crate::helpers::assert_problem(status, &body, 422, "validation", Some("cursor"));
    let (status, body) = app.get(&format!("/api/v1/clusters/{cluster}/events?limit=501"), &owner.access).await;
    crate::helpers::assert_problem(status, &body, 422, "validation", Some("limit"));
}

/// One cluster floods (as fast as it can: oversized, over-quota and over-rate reports, and
/// reconnects) while another reports at a steady pace: the other's acknowledgements stay
/// within their normal latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_cluster_does_not_slow_another() {
    let db = TestDb::new(Engine::Sqlite).await;
    let app = TestApp::spawn_with(db, |c| {
        (c.gateway_rate_per_sec, c.gateway_rate_burst) = (20.0, 40.0);
        c.quota_series = 50;
        c.quota_events_per_min = 100;
        c.quota_bytes = "events=65536".parse().unwrap();
    })
    .await;
    let owner = app.owner("ada@example.com").await;
    let (_, flooder) = registered(&app, &owner, "flood").await;
    let (_, steady_id) = registered(&app, &owner, "steady").await;
    let mut steady = Stream::open(&app, &steady_id).await.unwrap();
    let minute = (app.state.clock.now_ms() / 60_000) * 60_000;
    async fn latency(steady: &mut Stream, start_ms: i64) -> Duration {
        let started = Instant::now();
        let seq = steady.report(metrics(start_ms, 10, 0)).await;
        steady.acked(seq).await;
        let took = started.elapsed();
        // A well-behaved agent: well within the message rate.
        tokio::time::sleep(Duration::from_millis(60)).await;
        took
    }
    let mut normal = Vec::new();
    for i in 0..20 {
        normal.push(latency(&mut steady, minute + i * 1000).await);
    }

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        let app = &app;
        let flooder = &flooder;
        async move {
            let many = |prefix: String, n: usize| (0..n).map(|k| format!("{prefix}-{k}")).collect::<Vec<_>>();
            let (mut sent, mut streams) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(Stream { tx, mut rx, .. }) = Stream::open(app, flooder).await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                // Read what the server sends, so its acknowledgements never hold it back.
                tokio::spawn(async move { while let Ok(Some(_)) = rx.message().await {} });
                streams += 1;
                for i in 0.. {
                    // New workloads (series), many small events, and oversized events: what
                    // costs the shared database most when stored.
                    let names = many(format!("s{streams}-{i}"), 500);
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    let body = match i % 3 {
                        0 => workloads(minute + i, &names),
                        1 => events(&names[..200], minute, 100),
                        _ => events(&names[..1], minute, 70_000),
                    };
                    if tx.send(crate::gateway::msg(sent + 1, body)).await.is_err() || stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    sent += 1;
                    if i > 200 {
                        break;
                    }
                }
            }
            (sent, streams)
        }
    };
    let measure = async {
        let mut during = Vec::new();
        for i in 20..60 {
            during.push(latency(&mut steady, minute + i * 1000).await);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        during
    };
    let ((sent, streams), mut during) = tokio::join!(flood, measure);
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (normal, during_median) = (median(&mut normal), median(&mut during));
    let (p90, worst) = (during[during.len() * 9 / 10], during[during.len() - 1]);
    eprintln!("flood: {sent} messages on {streams} streams; steady ack latency median {normal:?} before; during: median {during_median:?}, p90 {p90:?}, worst {worst:?}");
    assert!(sent > 100, "the flood did not flood: {sent}");
    // Bounds with room for a busy test machine, far below what storing the flood costs.
    assert!(during_median <= (normal * 3).max(Duration::from_millis(50)), "median {during_median:?} during the flood against {normal:?} before");
    assert!(p90 <= (normal * 10).max(Duration::from_millis(150)), "p90 {p90:?} during the flood against {normal:?} before");
    assert!(refused_total(&app, "series").await > 0 || refused_total(&app, "bytes").await > 0);
}
