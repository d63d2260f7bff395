//! The CPU cost of alert evaluation with the demo fleet: the server's CPU per stored report with
//! the rules evaluated at their default cadence, against the same fleet with evaluation off
//! (the ingest cost alone), alternating in one run, on SQLite and (when configured) PostgreSQL.
//!
//! Goal (issue 12, "Performance"): with the demo fleet (meshfleet-sim, 1,000 clusters) and rules
//! on, the evaluation's CPU cost per report, next to the ingest cost.
//!
//! Run:   cargo bench -p meshfleet-server --bench alert_evaluation
//! With PostgreSQL: MESHFLEET_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres (or
//! MESHFLEET_BENCH_POSTGRES_URL). Knobs: MESHFLEET_BENCH_CLUSTERS (default 1000),
//! MESHFLEET_BENCH_PAIRS (on/off pairs per engine, default 2), MESHFLEET_BENCH_WARMUP_SECS
//! (default 20), MESHFLEET_BENCH_SECS (measured seconds per phase, default 30).
//!
//! Method. Each phase starts the real `meshfleet-server` binary in its own process with a fresh
//! database (rules on: its defaults, evaluation every second; off:
//! `MESHFLEET_ALERT_EVALUATION_MS=3600000`, as the list_clusters bench does), signs up, and runs
//! the demo fleet in this process with `meshfleet_sim::run` (the `meshfleet-sim` code: N clusters
//! created through the API, each registered and connected as a real agent client, reporting
//! metrics every 10 s plus its churn and warnings). Once every agent is connected and after a
//! warm-up, the server's CPU (utime+stime from /proc/<pid>/stat) is measured over the window and
//! divided by the reports it stored in that window (`gateway_reports_total{outcome="stored"}`).
//! Phases alternate on, off, on, off. On PostgreSQL the database's own work runs in its
//! processes, so their CPU (every `postgres` process on the machine, which other users of that
//! server would add to) is shown beside the server's.

mod support;

use std::time::{Duration, Instant};

use meshfleet_test_support::process::{clock_ticks_per_sec, cpu_ticks};
use support::{metric, postgres_ticks, scrape, start_server};

struct Knobs {
    clusters: usize,
    pairs: usize,
    warmup: Duration,
    window: Duration,
}

struct Phase {
    evaluation: bool,
    reports: f64,
    server_cpu_s: f64,
    postgres_cpu_s: f64,
    evaluations: f64,
    secs: f64,
    load: (f64, f64),
}

impl Phase {
    fn server_ms_per_report(&self) -> f64 {
        1000.0 * self.server_cpu_s / self.reports.max(1.0)
    }
    fn postgres_ms_per_report(&self) -> f64 {
        1000.0 * self.postgres_cpu_s / self.reports.max(1.0)
    }
}

async fn phase(engine: &str, evaluation: bool, knobs: &Knobs) -> anyhow::Result<Phase> {
    let dir = tempfile::tempdir()?;
    let (url, pg) = support::database(engine, &dir.path().join("db")).await?;
    let off: &[(&str, &str)] = if evaluation { &[] } else { &[("MESHFLEET_ALERT_EVALUATION_MS", "3600000")] };
    let server = start_server(&url, dir.path(), off).await?;
    let http = reqwest::Client::new();
    let (token, _) = support::owner(&http, &server.api).await?;
    let fleet = support::DemoFleet::connected(&server, &token, knobs.clusters, dir.path().join("sim")).await?;
    let setup_time = fleet.setup;
    tokio::time::sleep(knobs.warmup).await;
    let load0 = support::loadavg();
    let (before, cpu0, pg0, t0) = (scrape(&server.api).await, cpu_ticks(server.pid), postgres_ticks(), Instant::now());
    tokio::time::sleep(knobs.window).await;
    let (after, cpu1, pg1, secs) = (scrape(&server.api).await, cpu_ticks(server.pid), postgres_ticks(), t0.elapsed().as_secs_f64());
    let delta = |name: &str, labels: &[&str]| metric(&after, name, labels) - metric(&before, name, labels);
    let tick = clock_ticks_per_sec();
    let result = Phase {
        evaluation,
        reports: delta("gateway_reports_total", &["outcome=\"stored\""]),
        server_cpu_s: cpu1.saturating_sub(cpu0) as f64 / tick,
        postgres_cpu_s: if pg.is_some() { pg1.saturating_sub(pg0) as f64 / tick } else { 0.0 },
        evaluations: delta("job_runs_total", &["job=\"alert-evaluation\""]),
        secs,
        load: (load0, support::loadavg()),
    };
    let firing = scrape(&server.api).await;
    fleet.stop().await;
    drop(server);
    if let Some(pg) = pg {
        support::drop_pg_db(&pg).await;
    }
    eprintln!(
        "  [{engine}] evaluation {}: fleet connected in {:.0?}; {:.0} reports stored in {:.1} s, server CPU {:.2} s ({:.3} ms/report), {:.0} evaluations, failed job runs {:.0}; load {:.2}",
        if evaluation { "on" } else { "off" },
        setup_time,
        result.reports,
        result.secs,
        result.server_cpu_s,
        result.server_ms_per_report(),
        result.evaluations,
        metric(&firing, "job_failures_total", &[]).max(0.0),
        result.load.1
    );
    Ok(result)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = !std::env::args().any(|a| a == "--bench");
    let knobs = Knobs {
        clusters: support::env_num("MESHFLEET_BENCH_CLUSTERS").unwrap_or(if quick { 20 } else { 1000 }),
        pairs: support::env_num("MESHFLEET_BENCH_PAIRS").unwrap_or(if quick { 1 } else { 2 }),
        warmup: Duration::from_secs(support::env_num("MESHFLEET_BENCH_WARMUP_SECS").unwrap_or(if quick { 2 } else { 20 })),
        window: Duration::from_secs(support::env_num("MESHFLEET_BENCH_SECS").unwrap_or(if quick { 5 } else { 30 })),
    };
    println!(
        "alert_evaluation: {} simulated clusters, metrics every 10 s; {} on/off pairs per engine; {:?} warm-up, {:?} measured; {} cores, load {:.2}",
        knobs.clusters,
        knobs.pairs,
        knobs.warmup,
        knobs.window,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        support::loadavg()
    );
    let mut phases = Vec::new();
    for engine in support::engines() {
        for _ in 0..knobs.pairs {
            for evaluation in [true, false] {
                phases.push((engine, phase(engine, evaluation, &knobs).await?));
            }
        }
    }
    println!("| engine | evaluation | reports stored/s | evaluations | server CPU % of a core | server CPU ms/report | postgres CPU ms/report | load avg |");
    println!("|---|---|---|---|---|---|---|---|");
    for (engine, p) in &phases {
        println!(
            "| {engine} | {} | {:.1} | {:.0} | {:.1} | {:.3} | {} | {:.2} -> {:.2} |",
            if p.evaluation { "on (every 1 s)" } else { "off" },
            p.reports / p.secs,
            p.evaluations,
            100.0 * p.server_cpu_s / p.secs,
            p.server_ms_per_report(),
            if *engine == "postgres" { format!("{:.3}", p.postgres_ms_per_report()) } else { "-".into() },
            p.load.0,
            p.load.1
        );
    }
    for engine in support::engines() {
        let mean = |on: bool, f: fn(&Phase) -> f64| {
            let v: Vec<f64> = phases.iter().filter(|(e, p)| *e == engine && p.evaluation == on).map(|(_, p)| f(p)).collect();
            v.iter().sum::<f64>() / v.len().max(1) as f64
        };
        let (on, off) = (mean(true, Phase::server_ms_per_report), mean(false, Phase::server_ms_per_report));
        let (pg_on, pg_off) = (mean(true, Phase::postgres_ms_per_report), mean(false, Phase::postgres_ms_per_report));
        println!(
            "[{engine}] server CPU per report: ingest alone {off:.3} ms, with evaluation {on:.3} ms; the evaluation's share {:.3} ms per report ({:.0}% of the total){}",
            on - off,
            100.0 * (on - off) / on.max(1e-9),
            if engine == "postgres" { format!("; postgres processes {pg_off:.3} -> {pg_on:.3} ms per report") } else { String::new() }
        );
    }
    Ok(())
}
