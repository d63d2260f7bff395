//! Planning a rollout over a large fleet (issue 15): with 10,000 clusters in one organization,
//! each with a reported control plane, the time of `POST /api/v1/rollouts/plan` over all of
//! them (canary wave by label, batches of 10%, a few upgrade policies) next to listing those
//! same clusters through `GET /api/v1/clusters` (pages of 500, the most a page holds), both
//! measured in the same run, sequentially, with the read cache off so every list is real.
//!
//! Goal: the plan under 1 s (p99).
//!
//! cargo bench -p meshfleet-server --bench rollout_plan
//! (MESHFLEET_TEST_POSTGRES_URL=postgres://... adds PostgreSQL; MESHFLEET_BENCH_CLUSTERS sets the
//! fleet size, MESHFLEET_BENCH_ROUNDS the repetitions of each, default 20.)

mod support;

use std::time::{Duration, Instant};

use anyhow::Context;
use meshfleet_server::domain::{ClusterId, OrgId};
use meshfleet_server::store::{self, clusters::Cluster, inventory};
use serde_json::json;
use support::{database, engines, env_num, http_json, ms, owner, pct, start_in_process};

const GOAL: Duration = Duration::from_secs(1);
const OPERATOR: &str = "bench-operator-token";

async fn seed(state: &meshfleet_server::AppState, org: OrgId, n: usize) -> anyhow::Result<()> {
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await?;
    for i in 0..n {
        let id = ClusterId::new();
        let ring = match i % 100 {
            0 => "canary",
            1..=4 => "frozen",
            _ => "main",
        };
        let cluster = Cluster {
            id,
            org_id: org,
            name: format!("cluster-{i:05}"),
            labels: [("ring".to_owned(), ring.to_owned()), ("region".to_owned(), ["eu", "us", "ap"][i % 3].to_owned())].into(),
            status: "connected".into(),
            created_at: now,
            updated_at: now,
            last_seen_at: Some(now),
            agent_version: Some(env!("CARGO_PKG_VERSION").into()),
            kubernetes_version: Some("v1.33.1".into()),
        };
        store::clusters::insert(&mut tx, &cluster).await?;
        let facts = inventory::Facts {
            kubernetes_version: "v1.33.1".into(),
            node_count: 5,
            control_plane: inventory::ControlPlane { version: env!("CARGO_PKG_VERSION").into(), replicas: 2, ready_replicas: 2, components: vec![] },
            namespaces: vec!["shop".into(), "payments".into()],
            certificates: vec![inventory::CertificateInfo { role: "issuer".into(), not_after: now + 30 * 86_400_000, ..Default::default() }],
            pods_without_proxy: vec![],
        };
        inventory::set_facts(&mut tx, org, id, &facts, now).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Sorted durations of `rounds` runs of `f`.
async fn timed<F: std::future::Future<Output = anyhow::Result<()>>>(rounds: usize, mut f: impl FnMut() -> F) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        f().await?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times)
}

async fn run(engine: &str, clusters: usize, rounds: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (url, pg) = database(engine, dir.path()).await?;
    let operator = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(OPERATOR));
    let server = start_in_process(&url, dir.path(), &[("MESHFLEET_READ_CACHE_MS", "0"), ("MESHFLEET_OPERATOR_TOKEN_SHA256", &operator)]).await?;
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let (token, org) = owner(&http, &base).await?;
    let t = Instant::now();
    seed(&server.state, org.parse().context("organization id")?, clusters).await?;
    eprintln!("{engine}: seeded {clusters} clusters in {:.1} s", t.elapsed().as_secs_f64());
    if engine == "postgres" {
        sqlx::query("ANALYZE").execute(&server.state.db.pool).await?;
    }
    let policies = [
        json!({ "name": "frozen", "selector": "ring=frozen", "position": 1, "excluded": true }),
        json!({ "name": "eu nights", "selector": "region=eu", "windows": [{ "days": ["sat", "sun"], "start": "02:00", "end": "05:00" }], "time_zone": "Europe/Berlin" }),
    ];
    for p in policies {
        http_json(http.post(format!("{base}/api/v1/upgrade-policies")).bearer_auth(&token).json(&p), "create policy").await?;
    }
    let target = "0.2.0";
    let release = json!({ "version": target, "released_on": "2026-12-01" });
    http_json(http.post(format!("{base}/api/v1/operator/releases")).bearer_auth(OPERATOR).json(&release), "add the target release").await?;
    let request = json!({ "target_version": target, "waves": { "canary_selector": "ring=canary", "batch_percent": 10 } });

    let list_all = || async {
        let mut cursor: Option<String> = None;
        let mut seen = 0;
        loop {
            let mut url = format!("{base}/api/v1/clusters?limit=500");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page = http_json(http.get(url).bearer_auth(&token), "list clusters").await?;
            seen += page["items"].as_array().map_or(0, Vec::len);
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        anyhow::ensure!(seen == clusters, "listed {seen} of {clusters}");
        Ok(())
    };
    let plan = || async {
        let plan = http_json(http.post(format!("{base}/api/v1/rollouts/plan")).bearer_auth(&token).json(&request), "plan").await?;
        let planned: usize = plan["waves"].as_array().context("waves")?.iter().map(|w| w["clusters"].as_array().map_or(0, Vec::len)).sum();
        let skipped = plan["skipped"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(planned + skipped == clusters, "planned {planned} + skipped {skipped} of {clusters}");
        Ok(())
    };
    // Warm both (statement caches, the release cache).
    list_all().await?;
    plan().await?;
    let listed = timed(rounds, list_all).await?;
    let planned = timed(rounds, plan).await?;
    println!("\n{engine}, {clusters} clusters, {rounds} rounds each (load {:.1}):", support::loadavg());
    println!("  {:<44} {:>9} {:>9}", "", "p50", "p99");
    println!("  {:<44} {:>9} {:>9}", "list every cluster (GET, pages of 500)", ms(pct(&listed, 50.0)), ms(pct(&listed, 99.0)));
    println!("  {:<44} {:>9} {:>9}", "plan a rollout over them (POST .../plan)", ms(pct(&planned, 50.0)), ms(pct(&planned, 99.0)));
    let p99 = pct(&planned, 99.0);
    println!(
        "  plan / list (p50): {:.2}x; goal p99 < {}: {}",
        pct(&planned, 50.0).as_secs_f64() / pct(&listed, 50.0).as_secs_f64(),
        ms(GOAL),
        if p99 < GOAL { "met" } else { "NOT met" }
    );
    server.stop().await?;
    if let Some(pg) = pg {
        support::drop_pg_db(&pg).await;
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // Without --bench (cargo test --all-targets) a small smoke run.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let clusters = if smoke { 50 } else { env_num("MESHFLEET_BENCH_CLUSTERS").unwrap_or(10_000) };
    let rounds = if smoke { 2 } else { env_num("MESHFLEET_BENCH_ROUNDS").unwrap_or(20) };
    for engine in engines() {
        run(engine, clusters, rounds).await?;
    }
    Ok(())
}
