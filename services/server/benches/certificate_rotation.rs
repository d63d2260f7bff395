//! The mesh's PKI at fleet scale: the issuers of 1,000 simulated clusters rotated, then a full
//! trust-anchor rotation over them, on SQLite and (when configured) PostgreSQL; the signing rate
//! next to a raw signing loop measured in the same run.
//!
//! Goal (issue 13, "Scale"): report the time, the server's CPU and the database's load; the
//! service signs issuers at no less than half the raw loop's rate.
//!
//! Run:   cargo bench -p meshfleet-server --bench certificate_rotation
//! With PostgreSQL: MESHFLEET_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres (or
//! MESHFLEET_BENCH_POSTGRES_URL). Knobs: MESHFLEET_BENCH_CLUSTERS (default 1000),
//! MESHFLEET_BENCH_RAW_SECS (the raw loop's seconds, default 3), MESHFLEET_BENCH_SIGN_ROUNDS
//! (part 3b's calls per cluster, default 12: about 2 s, over which the once-a-second alert
//! evaluation weighs as it does in the long run), MESHFLEET_BENCH_SIGN_CONCURRENCY (part 3's
//! calls in flight, default: one per cluster).
//!
//! Method. The real `meshfleet-server` binary runs in its own process with a fresh database; the
//! demo fleet runs in this process with `meshfleet_sim::run` (the `meshfleet-sim` code: each
//! cluster registered and connected as a real agent client; on rotate-issuer it makes a P-256
//! key and CSR, calls `SignIssuer` over its session's mTLS connection, checks the chain, saves its PKI
//! to disk and reports the new certificates and pods; on set-trust-bundle it checks its issuer
//! verifies under the bundle). Once every agent is connected an admin creates the organization's
//! anchor, then:
//! 1. Issuers: a rotate-issuer command for every cluster through the API (16 at a time), timed
//!    until every one has succeeded (counted in the database every 200 ms).
//! 2. Anchor rotation: `POST /api/v1/trust-anchors/rotations`, timed until its phase is `done`
//!    (distribute, reissue, retire: three commands per cluster, each gated on the pods' reports).
//! 3. SignIssuer alone: the fleet stopped, a rotate-issuer command opened per cluster, then each
//!    cluster's saved identity opens its mTLS connection (as an agent's session holds one) and
//!    calls `SignIssuer` over it, every cluster at once (as when a rotation sends every cluster
//!    its command), with the CSRs made before the clock starts: the gateway's signing path by
//!    itself. 3a times each connection's first call (its certificate checked in the database,
//!    the calls arriving together in one query), 3b twelve more rounds (the certificate
//!    remembered as valid, as for an agent whose stream is open; the command stays open until
//!    its agent reports, so each call signs a new issuer under it, as a retry would).
//!
//! Server CPU is utime+stime of its process over each part; the database's load is, on
//! PostgreSQL, the CPU of its processes and its committed transactions and rows written
//! (`pg_stat_database`); on SQLite it is inside the server's process. The raw loop is what the
//! gateway's signing itself costs, on one core of this process with nothing else: check a CSR
//! (`csr::check_issuer_request`) and sign an issuer with an already parsed anchor
//! (`mint::sign_ca`), over pre-made CSRs. The service's rate is issuers per second of wall
//! time for parts 1 (including the API calls, the command deliveries, the agents' key
//! generation, chain checks and reports, and the database) and 3, and issuers per second of
//! server CPU. This process's own CPU is reported too: the simulated agents, or part 3's
//! callers, share the two cores with the server.
//!
//! Without `--bench` (e.g. `cargo test --all-targets`) it runs a seconds-long smoke version.

mod support;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use meshfleet_pki::mint::{self, CaProfile};
use meshfleet_test_support::process::{clock_ticks_per_sec, cpu_ticks};
use serde_json::{json, Value};
use support::{http_json, postgres_ticks, start_server, Db};

const DAY: Duration = Duration::from_secs(86_400);

/// What one part cost.
#[derive(Default)]
struct Part {
    secs: f64,
    server_cpu_s: f64,
    /// This process's: the simulated agents (parts 1, 2) or the calling clients (part 3).
    bench_cpu_s: f64,
    postgres_cpu_s: f64,
    /// (transactions committed, rows inserted + updated + deleted) on PostgreSQL.
    pg_writes: Option<(i64, i64)>,
    load: (f64, f64),
}

/// A running measurement: the counters at its start.
struct Meter {
    started: Instant,
    cpu: u64,
    own_cpu: u64,
    pg: u64,
    stats: Option<(i64, i64)>,
    load: f64,
}

impl Db {
    async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        Ok(match (&self.pg, &self.sqlite) {
            (Some(pg), _) => sqlx::query_scalar(sql).fetch_one(pg).await?,
            (_, Some(lite)) => sqlx::query_scalar(sql).fetch_one(lite).await?,
            _ => 0,
        })
    }
}

impl Meter {
    async fn start(pid: u32, db: &Db) -> Meter {
        Meter {
            started: Instant::now(),
            cpu: cpu_ticks(pid),
            own_cpu: cpu_ticks(std::process::id()),
            pg: postgres_ticks(),
            stats: db.pg_stats().await,
            load: support::loadavg(),
        }
    }

    async fn stop(self, pid: u32, db: &Db) -> Part {
        let tick = clock_ticks_per_sec();
        let secs = self.started.elapsed().as_secs_f64();
        let (cpu, own_cpu, pg) = (cpu_ticks(pid), cpu_ticks(std::process::id()), postgres_ticks());
        // Backends report their statistics at most once a second (PostgreSQL 15+): wait for
        // the last of them before the rows are read.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let stats = db.pg_stats().await;
        Part {
            secs,
            server_cpu_s: cpu.saturating_sub(self.cpu) as f64 / tick,
            bench_cpu_s: own_cpu.saturating_sub(self.own_cpu) as f64 / tick,
            postgres_cpu_s: if db.pg.is_some() { pg.saturating_sub(self.pg) as f64 / tick } else { 0.0 },
            pg_writes: self.stats.zip(stats).map(|(a, b)| (b.0 - a.0, b.1 - a.1)),
            load: (self.load, support::loadavg()),
        }
    }
}

struct EngineResult {
    engine: &'static str,
    clusters: usize,
    setup: Duration,
    issuers: Part,
    rotation: Part,
    /// Part 3's first call on each connection, then its later rounds.
    sign_first: Part,
    sign_alone: Part,
    pods: i64,
}

/// The raw signing loop: issuers signed per second on one core (CSR check + signature).
fn raw_signing_rate(secs: f64) -> anyhow::Result<f64> {
    let anchor = mint::new_anchor(&CaProfile::new("bench anchor", 365 * DAY))?.signer()?;
    let csrs: Vec<Vec<u8>> = (0..64).map(|_| meshfleet_agent::identity::new_key_and_csr().map(|(_, csr)| csr)).collect::<Result<_, _>>()?;
    let mut profile = CaProfile::new("meshfleet issuer bench", 30 * DAY);
    profile.path_len = Some(0);
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed().as_secs_f64() < secs {
        let key = meshfleet_pki::csr::check_issuer_request(&csrs[n as usize % csrs.len()], "cluster.local")?;
        std::hint::black_box(mint::sign_ca(&anchor, &key, &profile)?);
        n += 1;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

async fn run_engine(engine: &'static str, clusters: usize, rounds: usize, in_flight: usize) -> anyhow::Result<EngineResult> {
    let dir = tempfile::tempdir()?;
    let (url, pg) = support::database(engine, &dir.path().join("db")).await?;
    let result = async {
        let server = start_server(&url, dir.path(), &[]).await?;
        let db = Db::open(&url).await.context("opening the database to count")?;
        let http = reqwest::Client::new();
        let (token, _) = support::owner(&http, &server.api).await?;
        let fleet = support::DemoFleet::connected(&server, &token, clusters, dir.path().join("sim")).await?;
        let setup = fleet.setup;
        let api = |path: &str| format!("{}{path}", server.api);
        http_json(http.post(api("/api/v1/trust-anchors")).bearer_auth(&token).json(&json!({})), "create the anchor").await?;
        let list = http_json(http.get(api("/api/v1/clusters?limit=500")).bearer_auth(&token), "list clusters").await?;
        let mut ids: Vec<String> = ids_of(&list);
        let mut cursor = list["next_cursor"].as_str().map(str::to_owned);
        while let Some(c) = cursor {
            let page = http_json(http.get(api(&format!("/api/v1/clusters?limit=500&cursor={c}"))).bearer_auth(&token), "list clusters").await?;
            ids.extend(ids_of(&page));
            cursor = page["next_cursor"].as_str().map(str::to_owned);
        }
        anyhow::ensure!(ids.len() == clusters, "{} clusters listed, {clusters} expected", ids.len());

        // Part 1: every cluster's issuer signed by the anchor.
        eprintln!("{engine}: 1. issuers through commands (server pid {})", server.pid);
        let meter = Meter::start(server.pid, &db).await;
        let sent: Vec<anyhow::Result<Value>> = futures::stream::iter(ids.iter())
            .map(|id| {
                let req = http.post(api(&format!("/api/v1/clusters/{id}/commands"))).bearer_auth(&token).json(&json!({ "kind": "rotate-issuer" }));
                http_json(req, "rotate-issuer")
            })
            .buffer_unordered(16)
            .collect()
            .await;
        sent.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        let done_sql = "SELECT COUNT(*) FROM commands WHERE kind = 'rotate-issuer' AND state = 'succeeded'";
        let failed_sql = "SELECT COUNT(*) FROM commands WHERE state IN ('failed', 'expired')";
        loop {
            let done = db.count(done_sql).await?;
            if done as usize >= clusters {
                break;
            }
            if db.count(failed_sql).await? > 0 || meter.started.elapsed() > Duration::from_secs(600) {
                bail!("{done} of {clusters} issuers after {:?}; some failed:\n{}", meter.started.elapsed(), server.output.tail());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let issuers = meter.stop(server.pid, &db).await;

        // Part 2: a full trust-anchor rotation over the fleet.
        eprintln!("{engine}: 2. anchor rotation (server pid {})", server.pid);
        let meter = Meter::start(server.pid, &db).await;
        let r = http_json(http.post(api("/api/v1/trust-anchors/rotations")).bearer_auth(&token).json(&json!({})), "start the rotation").await?;
        let path = api(&format!("/api/v1/trust-anchors/rotations/{}", r["id"].as_str().context("rotation id")?));
        loop {
            let r = http_json(http.get(&path).bearer_auth(&token), "read the rotation").await?;
            if r["phase"] == "done" {
                break;
            }
            let failed = r["clusters"].as_array().into_iter().flatten().find(|c| c["state"] == "failed");
            if let Some(f) = failed {
                bail!("a cluster failed in {}: {f}", r["phase"]);
            }
            if meter.started.elapsed() > Duration::from_secs(900) {
                bail!("the rotation is still in {} after {:?}", r["phase"], meter.started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let rotation = meter.stop(server.pid, &db).await;
        let pods = db.count("SELECT COUNT(*) FROM cluster_pods").await?;
        fleet.stop().await;

        // Part 3: SignIssuer alone. With the agents gone, a rotate-issuer command per cluster
        // stays open; each cluster's saved identity then calls SignIssuer over its own
        // connection, as its agent would over its session's.
        for id in &ids {
            let req = http.post(api(&format!("/api/v1/clusters/{id}/commands"))).bearer_auth(&token).json(&json!({ "kind": "rotate-issuer" }));
            http_json(req, "rotate-issuer").await?;
        }
        let open_sql = "SELECT id, cluster_id FROM commands WHERE kind = 'rotate-issuer' AND state IN ('pending', 'delivered')";
        let open: Vec<(String, String)> = match (&db.pg, &db.sqlite) {
            (Some(pg), _) => sqlx::query_as(open_sql).fetch_all(pg).await?,
            (_, Some(lite)) => sqlx::query_as(open_sql).fetch_all(lite).await?,
            _ => Vec::new(),
        };
        anyhow::ensure!(open.len() == clusters, "{} open rotate-issuer commands, {clusters} expected", open.len());
        let gateway: Value = serde_json::from_slice(&std::fs::read(dir.path().join("sim/gateway.json"))?)?;
        let (gateway_url, ca_pem) = (gateway["gateway_address"].as_str().context("gateway")?.to_owned(), gateway["ca_pem"].as_str().context("ca")?.to_owned());
        let identities: std::collections::HashMap<String, meshfleet_agent::Identity> = (0..clusters)
            .map(|i| meshfleet_agent::Identity::load(&dir.path().join(format!("sim/sim-{i:04}.identity.json"))).map(|id| (id.cluster_id.clone(), id)))
            .collect::<Result<_, _>>()?;
        // Each cluster's connection opened first, as an agent's session holds one: an agent
        // signs over its open stream's connection (`Reporter::sign_issuer`).
        let connections: Vec<(meshfleet_agent::GatewayConnection, String)> = futures::stream::iter(open)
            .map(|(command, cluster)| {
                let (url, ca, identity) = (&gateway_url, &ca_pem, identities.get(&cluster));
                async move { anyhow::Ok((meshfleet_agent::GatewayConnection::open(url, ca, identity.context("no identity for a cluster")?).await?, command)) }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        // The first call of each connection has its certificate checked in the database; an
        // agent's was checked when its stream opened (and again every 30 s while it is open),
        // so the rounds after it are the path an agent's SignIssuer takes. A command stays open
        // until its agent reports: each round signs a new issuer under it, as a retry would.
        eprintln!("{engine}: 3. SignIssuer alone, 1 + {rounds} rounds (server pid {})", server.pid);
        let sign_first = sign_round(&connections, 1, in_flight, server.pid, &db).await?;
        let sign_alone = sign_round(&connections, rounds, in_flight, server.pid, &db).await?;
        if let Some(p) = &db.pg {
            p.close().await;
        }
        anyhow::Ok(EngineResult { engine, clusters, setup, issuers, rotation, sign_first, sign_alone, pods })
    }
    .await;
    if let Some(pg) = pg {
        support::drop_pg_db(&pg).await;
    }
    result
}

/// Calls `SignIssuer` `rounds` times over each connection, `in_flight` calls at once, CSRs made
/// before the clock starts; what it cost.
async fn sign_round(connections: &[(meshfleet_agent::GatewayConnection, String)], rounds: usize, in_flight: usize, pid: u32, db: &Db) -> anyhow::Result<Part> {
    let mut calls = Vec::with_capacity(connections.len() * rounds);
    for _ in 0..rounds {
        for (connection, command) in connections {
            calls.push((connection, command, meshfleet_agent::identity::new_key_and_csr()?.1));
        }
    }
    let meter = Meter::start(pid, db).await;
    let signed: Vec<_> =
        futures::stream::iter(calls).map(|(connection, command, csr)| connection.sign_issuer(command, csr)).buffer_unordered(in_flight).collect().await;
    let part = meter.stop(pid, db).await;
    let failed = signed.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(failed == 0, "{failed} SignIssuer calls failed: {:?}", signed.iter().find_map(|r| r.as_ref().err().map(|e| e.to_string())));
    Ok(part)
}

fn ids_of(page: &Value) -> Vec<String> {
    page["items"].as_array().into_iter().flatten().filter_map(|c| c["id"].as_str().map(str::to_owned)).collect()
}

fn row(what: &str, p: &Part, per: f64, per_what: &str) {
    let writes = p.pg_writes.map(|(x, r)| format!("{x} transactions, {r} rows written")).unwrap_or_else(|| "in the server process".into());
    println!(
        "  {what}: {:.1} s | server CPU {:.1} s ({:.2} ms per {per_what}) | PostgreSQL CPU {:.1} s | bench process CPU {:.1} s | database: {writes} | load {:.1} -> {:.1}",
        p.secs,
        p.server_cpu_s,
        1000.0 * p.server_cpu_s / per,
        p.postgres_cpu_s,
        p.bench_cpu_s,
        p.load.0,
        p.load.1
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bench = std::env::args().any(|a| a == "--bench");
    let clusters = support::env_num("MESHFLEET_BENCH_CLUSTERS").unwrap_or(if bench { 1000 } else { 5 });
    let raw_secs = support::env_num("MESHFLEET_BENCH_RAW_SECS").unwrap_or(if bench { 3.0 } else { 0.2 });
    let rounds = support::env_num("MESHFLEET_BENCH_SIGN_ROUNDS").unwrap_or(if bench { 12 } else { 2 });
    let in_flight = support::env_num("MESHFLEET_BENCH_SIGN_CONCURRENCY").unwrap_or(clusters);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("certificate_rotation: {clusters} simulated clusters; part 3 with {in_flight} calls in flight; {cores} cores, load {:.2}", support::loadavg());
    for engine in support::engines() {
        let raw_before = raw_signing_rate(raw_secs)?;
        let r = run_engine(engine, clusters, rounds, in_flight).await?;
        let raw_after = raw_signing_rate(raw_secs)?;
        let raw = (raw_before + raw_after) / 2.0;
        let signed_alone = (r.clusters * rounds) as f64;
        let rate = |p: &Part, n: f64| (n / p.secs, n / p.server_cpu_s.max(1e-9));
        println!("{} ({} clusters connected in {:.1} s, {} pods):", r.engine, r.clusters, r.setup.as_secs_f64(), r.pods);
        row("1. issuers rotated through commands", &r.issuers, r.clusters as f64, "issuer");
        row("2. anchor rotation (distribute, reissue, retire)", &r.rotation, r.clusters as f64, "cluster");
        row("3a. SignIssuer alone, each connection's first call", &r.sign_first, r.clusters as f64, "issuer");
        row(&format!("3b. SignIssuer alone, {rounds} more per connection"), &r.sign_alone, signed_alone, "issuer");
        println!("  raw signing loop: {raw:.0} issuers/s on one core ({raw_before:.0} before, {raw_after:.0} after)");
        let parts = [
            ("1. through commands", &r.issuers, r.clusters as f64),
            ("3a. first calls", &r.sign_first, r.clusters as f64),
            ("3b. SignIssuer alone", &r.sign_alone, signed_alone),
        ];
        for (what, p, n) in parts {
            let (wall, cpu) = rate(p, n);
            let verdict = if wall >= raw / 2.0 { "met" } else { "NOT met" };
            println!(
                "  {what}: {wall:.0} issuers/s ({:.0}% of raw; goal >= 50%: {verdict}), {cpu:.0} per server CPU second ({:.0}% of raw)",
                100.0 * wall / raw,
                100.0 * cpu / raw
            );
        }
    }
    Ok(())
}
