//! 1,000 simulated clusters upgrading at once (issue 15): one rollout over the whole demo
//! fleet, every cluster in one wave (no canary, `max_concurrent` 1,000), on SQLite and (when
//! configured) PostgreSQL. Reported while it runs: the server's CPU, PostgreSQL's CPU and its
//! transactions and rows written, the total time, and, per cluster, the time from its
//! control-plane step finishing (the agent's result stored) to its next command being created
//! (goal: p99 under 1 s), next to the same gap for a rollout of 10 clusters in the same run.
//!
//! Run:   cargo bench -p meshfleet-server --bench rollout_fleet
//! With PostgreSQL: MESHFLEET_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres (or
//! MESHFLEET_BENCH_POSTGRES_URL). Knob: MESHFLEET_BENCH_CLUSTERS (default 1000).
//!
//! Method. The real `meshfleet-server` binary runs in its own process (so its CPU, from
//! /proc, is its own) with a fresh database and a release catalog holding 0.2.0; the demo
//! fleet runs in this process (`meshfleet_sim::run`: each cluster a real agent client, whose
//! control plane starts at 0.1.0, that carries out set-control-plane-version and
//! restart-workloads at once and reports the change before the result). Once every cluster
//! has reported its control plane, 10 of them (labelled `bench=base`) go through a rollout of
//! their own: the baseline, the same path with little work per look. Then the rollout over the
//! other N starts (`!bench`, verify 1 s, no soak, gates wide open: the gates are not what this
//! measures) and is timed until it is completed. The gap is read afterwards from the commands
//! table: for each cluster, the `restart-workloads` command's `created_at` minus its
//! `set-control-plane-version` command's `completed_at`, both stamped by the server. The rollouts
//! job looks every 500 ms and as soon as a command's final result is stored, so the gap is
//! bounded by how long a look takes; the looks' count and durations (the server's
//! `job_run_duration_seconds`) are reported beside it.
//!
//! Without `--bench` (e.g. `cargo test --all-targets`) it runs a seconds-long smoke version.

mod support;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meshfleet_test_support::process::{clock_ticks_per_sec, cpu_ticks};
use serde_json::{json, Value};
use support::{http_json, ms, pct, postgres_ticks, start_server, Db};

const GOAL: Duration = Duration::from_secs(1);
const BASE: usize = 10;

impl Db {
    async fn state(&self, rollout: &str) -> anyhow::Result<String> {
        let sql = "SELECT state FROM rollouts WHERE id = $1";
        Ok(match (&self.pg, &self.sqlite) {
            (Some(pg), _) => sqlx::query_scalar(sql).bind(rollout).fetch_one(pg).await?,
            (_, Some(lite)) => sqlx::query_scalar(sql).bind(rollout).fetch_one(lite).await?,
            _ => unreachable!("one of them is open"),
        })
    }

    /// (cluster, kind, created_at, completed_at) of the rollout's commands.
    async fn commands(&self, rollout: &str) -> anyhow::Result<Vec<(String, String, i64, Option<i64>)>> {
        let sql = "SELECT cluster_id, kind, created_at, completed_at FROM commands WHERE created_by = $1";
        let by = format!("service:rollout:{rollout}");
        Ok(match (&self.pg, &self.sqlite) {
            (Some(pg), _) => sqlx::query_as(sql).bind(by).fetch_all(pg).await?,
            (_, Some(lite)) => sqlx::query_as(sql).bind(by).fetch_all(lite).await?,
            _ => unreachable!("one of them is open"),
        })
    }
}

/// What one rollout cost, and its gaps.
struct Run {
    secs: f64,
    server_cpu_s: f64,
    postgres_cpu_s: f64,
    pg_writes: Option<(i64, i64)>,
    load: (f64, f64),
    gaps: Vec<Duration>,
    looks: Looks,
}

/// The rollouts job's runs (looks) during a rollout, from the server's
/// `job_run_duration_seconds` histogram.
#[derive(Default, Clone, Copy)]
struct Looks {
    count: f64,
    secs: f64,
    over_half_s: f64,
    over_1_s: f64,
}

impl Looks {
    async fn read(api: &str) -> Looks {
        let text = support::scrape(api).await;
        let job = r#"job="rollouts""#;
        let under = |le: &str| support::metric(&text, "job_run_duration_seconds_bucket", &[job, le]);
        let count = support::metric(&text, "job_run_duration_seconds_count", &[job]);
        Looks {
            count,
            secs: support::metric(&text, "job_run_duration_seconds_sum", &[job]),
            over_half_s: count - under(r#"le="0.5""#),
            over_1_s: count - under(r#"le="1""#),
        }
    }

    fn since(self, before: Looks) -> Looks {
        Looks {
            count: self.count - before.count,
            secs: self.secs - before.secs,
            over_half_s: self.over_half_s - before.over_half_s,
            over_1_s: self.over_1_s - before.over_1_s,
        }
    }
}

/// Starts `request` and times it until completed, with the server's and PostgreSQL's CPU.
async fn rollout(http: &reqwest::Client, api: &str, token: &str, pid: u32, db: &Db, request: Value, clusters: usize) -> anyhow::Result<Run> {
    let tick = clock_ticks_per_sec();
    let (cpu, pg, stats, load) = (cpu_ticks(pid), postgres_ticks(), db.pg_stats().await, support::loadavg());
    let looks = Looks::read(api).await;
    let started = Instant::now();
    let r = http_json(http.post(format!("{api}/api/v1/rollouts")).bearer_auth(token).json(&request), "start the rollout").await?;
    let id = r["id"].as_str().context("rollout id")?.to_owned();
    anyhow::ensure!(r["clusters"].as_array().map(Vec::len) == Some(clusters), "{clusters} clusters expected in {r}");
    loop {
        match db.state(&id).await?.as_str() {
            "completed" => break,
            "running" if started.elapsed() < Duration::from_secs(300) => tokio::time::sleep(Duration::from_millis(100)).await,
            other => {
                let r = http_json(http.get(format!("{api}/api/v1/rollouts/{id}")).bearer_auth(token), "read the rollout").await?;
                bail!("the rollout is {other} after {:?}: {}", started.elapsed(), r["reason"]);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let (cpu_after, pg_after) = (cpu_ticks(pid), postgres_ticks());
    let looks = Looks::read(api).await.since(looks);
    // Let the statistics collector catch up before the rows are read.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stats_after = db.pg_stats().await;
    let commands = db.commands(&id).await?;
    let mut per_cluster: std::collections::HashMap<&str, (Option<i64>, Option<i64>)> = Default::default();
    for (cluster, kind, created, completed) in &commands {
        let e = per_cluster.entry(cluster.as_str()).or_default();
        match kind.as_str() {
            "set-control-plane-version" => e.0 = *completed,
            "restart-workloads" => e.1 = Some(*created),
            _ => {}
        }
    }
    let mut gaps: Vec<Duration> = per_cluster
        .values()
        .map(|(done, next)| Ok(Duration::from_millis(u64::try_from(next.context("no restart-workloads")? - done.context("no completed control plane step")?)?)))
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(gaps.len() == clusters, "{} clusters with both steps, {clusters} expected", gaps.len());
    gaps.sort();
    Ok(Run {
        secs,
        server_cpu_s: cpu_after.saturating_sub(cpu) as f64 / tick,
        postgres_cpu_s: if db.pg.is_some() { pg_after.saturating_sub(pg) as f64 / tick } else { 0.0 },
        pg_writes: stats.zip(stats_after).map(|(a, b)| (b.0 - a.0, b.1 - a.1)),
        load: (load, support::loadavg()),
        gaps,
        looks,
    })
}

fn settings(max_concurrent: usize) -> Value {
    json!({ "waves": { "canary_count": 0, "batch_percent": 100 }, "max_concurrent": max_concurrent, "verify_seconds": 1, "soak_seconds": 0,
        "gates": { "max_success_rate_drop_points": 100, "max_p99_increase_percent": 10000 } })
}

async fn run_engine(engine: &'static str, clusters: usize) -> anyhow::Result<(Duration, Run, Run)> {
    let dir = tempfile::tempdir()?;
    let (url, pg) = support::database(engine, &dir.path().join("db")).await?;
    let result = async {
        let catalog = dir.path().join("catalog.yaml");
        std::fs::write(&catalog, "releases:\n- {version: 0.2.0, released_on: 2026-12-01}\n")?;
        let server = start_server(&url, dir.path(), &[("MESHFLEET_RELEASE_CATALOG", catalog.to_str().context("a UTF-8 path")?)]).await?;
        let db = Db::open(&url).await.context("opening the database")?;
        let http = reqwest::Client::new();
        let (token, _) = support::owner(&http, &server.api).await?;
        let api = |path: &str| format!("{}{path}", server.api);
        let total = clusters + BASE;
        let fleet = support::DemoFleet::connected(&server, &token, total, dir.path().join("sim")).await?;
        let setup = fleet.setup;
        // Every control plane reported: the plan takes them all.
        let preview = json!({ "target_version": "0.2.0", "settings": settings(1000) });
        let started = Instant::now();
        loop {
            let plan = http_json(http.post(api("/api/v1/rollouts/plan")).bearer_auth(&token).json(&preview), "plan").await?;
            let planned: usize = plan["waves"].as_array().into_iter().flatten().map(|w| w["clusters"].as_array().map_or(0, Vec::len)).sum();
            if planned == total {
                break;
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("{planned} of {total} clusters plannable: {}", plan["skipped"]);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let first = http_json(http.get(api(&format!("/api/v1/clusters?limit={BASE}"))).bearer_auth(&token), "list clusters").await?;
        for c in first["items"].as_array().context("items")? {
            let id = c["id"].as_str().context("cluster id")?;
            http_json(http.patch(api(&format!("/api/v1/clusters/{id}"))).bearer_auth(&token).json(&json!({ "labels": { "bench": "base" } })), "label").await?;
        }
        eprintln!("{engine}: baseline rollout of {BASE} clusters (server pid {})", server.pid);
        let request = json!({ "target_version": "0.2.0", "selector": "bench=base", "settings": settings(BASE) });
        let base = rollout(&http, &server.api, &token, server.pid, &db, request, BASE).await?;
        eprintln!("{engine}: rollout of {clusters} clusters at once");
        let request = json!({ "target_version": "0.2.0", "selector": "!bench", "settings": settings(clusters.min(1000)) });
        let fleet_run = rollout(&http, &server.api, &token, server.pid, &db, request, clusters).await?;
        fleet.stop().await;
        if let Some(p) = &db.pg {
            p.close().await;
        }
        anyhow::Ok((setup, base, fleet_run))
    }
    .await;
    if let Some(pg) = pg {
        support::drop_pg_db(&pg).await;
    }
    result
}

fn row(what: &str, r: &Run) {
    let writes = r.pg_writes.map(|(x, w)| format!("{x} transactions, {w} rows written")).unwrap_or_else(|| "in the server process".into());
    let (p50, p99, max) = (pct(&r.gaps, 50.0), pct(&r.gaps, 99.0), r.gaps.last().copied().unwrap_or_default());
    let verdict = if p99 < GOAL { "met" } else { "NOT met" };
    let l = r.looks;
    println!(
        "  {what}: {:.1} s | server CPU {:.1} s ({:.0}% of a core) | PostgreSQL CPU {:.1} s ({:.0}%) | database: {writes} | step done -> next command p50 {} p99 {} max {} ms (goal p99 < 1 s: {verdict}) | {} looks, mean {:.0} ms, {} over 0.5 s, {} over 1 s | load {:.1} -> {:.1}",
        r.secs,
        r.server_cpu_s,
        100.0 * r.server_cpu_s / r.secs,
        r.postgres_cpu_s,
        100.0 * r.postgres_cpu_s / r.secs,
        ms(p50),
        ms(p99),
        ms(max),
        l.count,
        1000.0 * l.secs / l.count.max(1.0),
        l.over_half_s,
        l.over_1_s,
        r.load.0,
        r.load.1
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bench = std::env::args().any(|a| a == "--bench");
    let clusters = support::env_num("MESHFLEET_BENCH_CLUSTERS").unwrap_or(if bench { 1000 } else { 5 });
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("rollout_fleet: {clusters} simulated clusters in one rollout (+{BASE} for the baseline); {cores} cores, load {:.2}", support::loadavg());
    for engine in support::engines() {
        let (setup, base, fleet) = run_engine(engine, clusters).await?;
        println!("{engine} ({} clusters connected in {:.1} s):", clusters + BASE, setup.as_secs_f64());
        row(&format!("baseline: {BASE} clusters"), &base);
        row(&format!("{clusters} clusters at once"), &fleet);
    }
    Ok(())
}
