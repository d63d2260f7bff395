//! Alert delivery under load: notifications queued at a sustained rate for webhook channels on
//! local receivers, with and without hanging endpoints, on SQLite and (when configured)
//! PostgreSQL. The run without hanging endpoints is the baseline, measured in the same run.
//!
//! Goal (issue 12, "Performance"): sustained 1,000 deliveries per second to local receivers,
//! while 1% of endpoints hang for 15 s: the healthy endpoints' p99 stays within 2x of a run with
//! no hanging endpoints; memory stays flat over the run.
//!
//! Run:   cargo bench -p meshfleet-server --bench alert_delivery
//! With PostgreSQL: MESHFLEET_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres (or
//! MESHFLEET_BENCH_POSTGRES_URL). Knobs: MESHFLEET_BENCH_RATE (notifications/s, default 1000),
//! MESHFLEET_BENCH_CHANNELS (default 100), MESHFLEET_BENCH_HANGING (hanging channels in the
//! second run, default 1), MESHFLEET_BENCH_SECS (seconds of queueing per run, default 30).
//!
//! Method. The server is the real `meshfleet-server` binary in its own process, with its
//! defaults but `alert_webhook_allow=127.0.0.1`: delivery job every 250 ms, 15 s delivery
//! timeout, retry schedule 0 s, 5 s, 5 min, ... One organization has C webhook channels (created
//! through the API), each its own axum receiver on 127.0.0.1:0 in this process, which timestamps
//! a request as soon as its body is read and answers 200; a hanging receiver never answers, so
//! every send to it lasts the whole delivery timeout. The load is generated in this process too,
//! out of the server's: notifications are queued the way the rule evaluation queues them,
//! `store::notifications::enqueue` of one `alert.firing` event in its own transaction on this
//! process's own connection to the database, which queues one message per enabled channel, so
//! RATE/C events a second, evenly spaced. Latency is from the commit of that transaction to the
//! receipt at a healthy receiver (the event carries its sequence number). Deliveries/s counts
//! healthy receipts during the queueing window. RSS is the server process's `VmRSS`, sampled
//! every second, and its CPU is utime+stime over the window. After the window the bench waits up
//! to 60 s for the healthy backlog to drain.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use meshfleet_server::db::Db;
use meshfleet_server::domain::alerting::EventType;
use meshfleet_server::domain::OrgId;
use meshfleet_server::store;
use meshfleet_test_support::process::{clock_ticks_per_sec, cpu_ticks};
use serde_json::Value;
use support::{ms, pct, Receipt};
use tokio::sync::mpsc;

const DRAIN: Duration = Duration::from_secs(60);

struct Knobs {
    rate: usize,
    channels: usize,
    hanging: usize,
    secs: u64,
}

struct Outcome {
    label: String,
    queued: usize,
    expected: usize,
    in_window: usize,
    delivered: usize,
    hanging_got: usize,
    latencies: Vec<Duration>,
    drained_after: Option<Duration>,
    per_5s: Vec<usize>,
    rss_mb: Vec<f64>,
    /// The server process's CPU over the queueing window, % of one core.
    cpu_pct: f64,
    load: (f64, f64),
}

async fn run(engine: &str, knobs: &Knobs, hanging: usize) -> anyhow::Result<Outcome> {
    let dir = tempfile::tempdir()?;
    let (url, pg) = support::database(engine, dir.path()).await?;
    let server = support::start_server(&url, dir.path(), &[("MESHFLEET_ALERT_WEBHOOK_ALLOW", "127.0.0.1")]).await?;
    let base = server.api.clone();
    // The load generator's own connection, as a second replica's would be.
    let db = Db::connect(&url, 4).await?;
    let http = reqwest::Client::new();
    let (token, org) = support::owner(&http, &base).await?;
    let org: OrgId = org.parse().map_err(|e| anyhow::anyhow!("org id: {e:?}"))?;
    let (healthy_tx, mut healthy_rx) = mpsc::unbounded_channel::<Receipt>();
    let (hanging_tx, mut hanging_rx) = mpsc::unbounded_channel::<Receipt>();
    for i in 0..knobs.channels {
        let hang = i < hanging;
        let hook = support::receiver(hang, if hang { hanging_tx.clone() } else { healthy_tx.clone() }).await?;
        support::webhook_channel(&http, &base, &token, &format!("receiver-{i:03}"), &hook).await?;
    }
    drop((healthy_tx, hanging_tx));

    // Receipts as they come: (sequence number of the event, when).
    let receipts: Arc<Mutex<Vec<(usize, Instant)>>> = Default::default();
    let collector = {
        let receipts = receipts.clone();
        tokio::spawn(async move {
            while let Some(r) = healthy_rx.recv().await {
                let seq = serde_json::from_str::<Value>(&r.body).ok().and_then(|e| e["alert"]["fingerprint"].as_str().and_then(|f| f.parse().ok()));
                receipts.lock().unwrap().push((seq.unwrap_or(usize::MAX), r.at));
            }
        })
    };
    let hanging_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hanging_counter = {
        let n = hanging_count.clone();
        tokio::spawn(async move {
            while hanging_rx.recv().await.is_some() {
                n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let rss_samples: Arc<Mutex<Vec<f64>>> = Default::default();
    let sampler = {
        let samples = rss_samples.clone();
        let pid = server.pid.to_string();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                samples.lock().unwrap().push(support::rss_kb(&pid) as f64 / 1024.0);
            }
        })
    };

    let load_start = support::loadavg();
    let events_per_sec = (knobs.rate as f64 / knobs.channels as f64).max(0.1);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / events_per_sec));
    let (started, cpu_start) = (Instant::now(), cpu_ticks(server.pid));
    let window_end = started + Duration::from_secs(knobs.secs);
    let mut queued_at: Vec<Instant> = Vec::new();
    let mut queued = 0;
    while Instant::now() < window_end {
        tick.tick().await;
        let seq = queued_at.len();
        let mut event = meshfleet_server::alerting::channels::test_event(org, chrono::Utc::now());
        event.event_type = EventType::Firing;
        event.alert.fingerprint = seq.to_string();
        let now = chrono::Utc::now().timestamp_millis();
        let mut tx = db.begin().await?;
        queued += store::notifications::enqueue(&mut tx, org, &event, now).await.context("enqueue")?;
        tx.commit().await?;
        queued_at.push(Instant::now());
    }
    let cpu_pct = (cpu_ticks(server.pid) - cpu_start) as f64 / clock_ticks_per_sec() / started.elapsed().as_secs_f64() * 100.0;
    let healthy = knobs.channels - hanging;
    let expected = queued_at.len() * healthy;
    let drain_from = Instant::now();
    let mut drained_after = None;
    while drain_from.elapsed() < DRAIN {
        if receipts.lock().unwrap().len() >= expected {
            drained_after = Some(drain_from.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let load_end = support::loadavg();
    sampler.abort();
    let receipts = receipts.lock().unwrap().clone();
    let mut latencies: Vec<Duration> = receipts.iter().filter_map(|(seq, at)| queued_at.get(*seq).map(|q| at.saturating_duration_since(*q))).collect();
    latencies.sort();
    let mut per_5s = vec![0; (knobs.secs as usize).div_ceil(5)];
    let mut in_window = 0;
    for (_, at) in &receipts {
        if *at < window_end {
            in_window += 1;
            per_5s[(at.duration_since(started).as_secs() / 5) as usize] += 1;
        }
    }
    let outcome = Outcome {
        label: if hanging == 0 { "no hanging endpoint (baseline)".into() } else { format!("{hanging} of {} endpoints hanging", knobs.channels) },
        queued,
        expected,
        in_window,
        delivered: receipts.len(),
        hanging_got: hanging_count.load(std::sync::atomic::Ordering::Relaxed),
        latencies,
        drained_after,
        per_5s,
        rss_mb: rss_samples.lock().unwrap().clone(),
        cpu_pct,
        load: (load_start, load_end),
    };
    drop(server);
    db.pool.close().await;
    collector.abort();
    hanging_counter.abort();
    if let Some(pg) = pg {
        support::drop_pg_db(&pg).await;
    }
    Ok(outcome)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = !std::env::args().any(|a| a == "--bench");
    let knobs = Knobs {
        rate: support::env_num("MESHFLEET_BENCH_RATE").unwrap_or(if quick { 100 } else { 1000 }),
        channels: support::env_num("MESHFLEET_BENCH_CHANNELS").unwrap_or(if quick { 10 } else { 100 }),
        hanging: support::env_num("MESHFLEET_BENCH_HANGING").unwrap_or(1),
        secs: support::env_num("MESHFLEET_BENCH_SECS").unwrap_or(if quick { 3 } else { 30 }),
    };
    println!(
        "alert_delivery: {} notifications/s queued for {} s to {} webhook channels; {} cores, load {:.2}",
        knobs.rate,
        knobs.secs,
        knobs.channels,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        support::loadavg()
    );
    let mut results = Vec::new();
    for engine in support::engines() {
        for hanging in [0, knobs.hanging] {
            let o = run(engine, &knobs, hanging).await?;
            eprintln!(
                "  [{engine}] {}: {} healthy deliveries in the window, p99 {} ms, deliveries per 5 s {:?}",
                o.label,
                o.in_window,
                ms(pct(&o.latencies, 99.0)),
                o.per_5s
            );
            results.push((engine, o));
        }
    }
    println!("| engine | run | queued | healthy delivered in window (/s) | p50 ms | p99 ms | max ms | all healthy delivered | to hanging | server CPU % | server RSS MB first / 10 s / end / max | load avg |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (engine, o) in &results {
        let rss = &o.rss_mb;
        let at = |i: usize| rss.get(i).or(rss.last()).copied().unwrap_or(0.0);
        let max = rss.iter().copied().fold(0.0, f64::max);
        println!(
            "| {engine} | {} | {} | {} ({:.0}/s) | {} | {} | {} | {} | {} | {:.0} | {:.1} / {:.1} / {:.1} / {:.1} | {:.2} -> {:.2} |",
            o.label,
            o.queued,
            o.in_window,
            o.in_window as f64 / knobs.secs as f64,
            ms(pct(&o.latencies, 50.0)),
            ms(pct(&o.latencies, 99.0)),
            ms(*o.latencies.last().unwrap_or(&Duration::ZERO)),
            match o.drained_after {
                Some(d) => format!("{} of {}, {:.1} s after the window", o.delivered, o.expected, d.as_secs_f64()),
                None => format!("{} of {} ({} s after the window)", o.delivered, o.expected, DRAIN.as_secs()),
            },
            o.hanging_got,
            o.cpu_pct,
            at(0),
            at(10),
            at(rss.len().saturating_sub(1)),
            max,
            o.load.0,
            o.load.1
        );
    }
    for pair in results.chunks(2) {
        if let [(engine, base), (_, hung)] = pair {
            let (b, h) = (pct(&base.latencies, 99.0), pct(&hung.latencies, 99.0));
            let rate = hung.in_window as f64 / knobs.secs as f64;
            // The hanging endpoints' share of the rate cannot be delivered.
            let healthy_rate = knobs.rate as f64 * (knobs.channels - knobs.hanging) as f64 / knobs.channels as f64;
            println!(
                "[{engine}] goal: healthy p99 with hanging endpoints within 2x of the baseline: {} ({} vs {} ms, {:.2}x); sustained {healthy_rate:.0}/s to the healthy endpoints: {} ({rate:.0}/s)",
                if h.as_secs_f64() <= 2.0 * b.as_secs_f64() { "PASS" } else { "FAIL" },
                ms(h),
                ms(b),
                h.as_secs_f64() / b.as_secs_f64().max(1e-9),
                if rate >= 0.95 * healthy_rate && hung.drained_after.is_some() { "PASS" } else { "FAIL" },
            );
        }
    }
    Ok(())
}
