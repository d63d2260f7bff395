//! Listing clusters under load: with 10,000 clusters in one organization, a page of 100
//! (`GET /api/v1/clusters?limit=100`, first page and random pages deeper in the list) next
//! to `GET /healthz` measured in the same run, on SQLite and (when configured) PostgreSQL.
//!
//! Goal (per list endpoint): at least a third of /healthz's throughput, and p99 under 20 ms.
//!
//! Run:   cargo bench -p meshfleet-server --bench list_clusters
//! With PostgreSQL: MESHFLEET_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres (or
//! MESHFLEET_BENCH_POSTGRES_URL; it wins). A fresh database `meshfleet_bench_<uuid>` is created
//! and dropped at the end.
//! Knobs: MESHFLEET_BENCH_SECS (measured seconds per endpoint, default 5),
//! MESHFLEET_BENCH_WARMUP_SECS (default 1), MESHFLEET_BENCH_CONNECTIONS (default 16),
//! MESHFLEET_BENCH_CLUSTERS (default 10000), MESHFLEET_BENCH_DB_CONNECTIONS (the server's
//! pool size, default 16 = the service default).
//!
//! Method: a real server on 127.0.0.1:0 in its own 2-worker tokio runtime; a closed-loop load
//! generator in a second 2-worker runtime: N tasks, each with its own keep-alive HTTP/1.1
//! connection, sending the next request as soon as the previous response body has been read.
//! Both share the machine's cores, so absolute figures understate a dedicated server.
//! Latencies of requests started after the warm-up are collected and sorted (nearest rank);
//! CPU use over each window comes from /proc (this process vs. everything else).
//! Seeding goes through the store functions in one transaction; PostgreSQL is ANALYZEd after.
//! The list is measured as the service runs by default, with its read cache (`cache`), and
//! then, for comparison, from a second server on the same database with the cache off. After
//! the load phases it prints where one unloaded, uncached list request's time goes (token
//! check, session query, list query, HTTP round trips) and the list query's plan.
//!
//! Without `--bench` (e.g. `cargo test --all-targets`) it runs a seconds-long smoke version.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use meshfleet_server::config::Config;
use meshfleet_server::db::Engine;
use meshfleet_server::domain::labels::Labels;
use meshfleet_server::domain::{ClusterId, OrgId};
use meshfleet_server::secrets::Sealer;
use meshfleet_server::store;
use meshfleet_server::store::clusters::Cluster;
use meshfleet_server::{AppState, Server};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const PAGE: usize = 100;
const GOAL_RATIO: f64 = 1.0 / 3.0;
const GOAL_P99: Duration = Duration::from_millis(20);
const PASSWORD: &str = "correct horse battery staple";
/// Every request (and the server's stop) is bounded by this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

struct Settings {
    smoke: bool,
    clusters: usize,
    connections: usize,
    db_connections: u32,
    warmup: Duration,
    measure: Duration,
    postgres: Option<String>,
}

fn env_num<T: FromStr>(name: &str) -> anyhow::Result<Option<T>> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map(Some).map_err(|_| anyhow!("{name}={v:?} is not a valid number")),
        _ => Ok(None),
    }
}

fn env_secs(name: &str, default: f64) -> anyhow::Result<Duration> {
    let secs = env_num::<f64>(name)?.unwrap_or(default);
    if !(0.0..=600.0).contains(&secs) {
        bail!("{name} must be between 0 and 600 seconds");
    }
    Ok(Duration::from_secs_f64(secs))
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        // `cargo bench` passes --bench; anything else (cargo test --all-targets) gets a smoke run.
        let smoke = !std::env::args().any(|a| a == "--bench");
        let postgres =
            ["MESHFLEET_BENCH_POSTGRES_URL", "MESHFLEET_TEST_POSTGRES_URL"].iter().find_map(|k| std::env::var(k).ok().filter(|u| !u.trim().is_empty()));
        let (clusters, secs, warmup) = if smoke { (300, 0.3, 0.1) } else { (10_000, 5.0, 1.0) };
        let s = Settings {
            smoke,
            clusters: env_num("MESHFLEET_BENCH_CLUSTERS")?.unwrap_or(clusters),
            connections: env_num("MESHFLEET_BENCH_CONNECTIONS")?.unwrap_or(16),
            db_connections: env_num("MESHFLEET_BENCH_DB_CONNECTIONS")?.unwrap_or(16),
            warmup: env_secs("MESHFLEET_BENCH_WARMUP_SECS", warmup)?,
            measure: env_secs("MESHFLEET_BENCH_SECS", secs)?,
            postgres,
        };
        if !(1..=1000).contains(&s.connections) {
            bail!("MESHFLEET_BENCH_CONNECTIONS must be between 1 and 1000");
        }
        if !(PAGE * 2..=1_000_000).contains(&s.clusters) {
            bail!("MESHFLEET_BENCH_CLUSTERS must be between {} and 1000000", PAGE * 2);
        }
        if s.measure.is_zero() {
            bail!("MESHFLEET_BENCH_SECS must be positive");
        }
        Ok(s)
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: a fresh database per run, dropped even on failure or panic.

struct PgDatabase {
    admin: String,
    name: String,
    url: String,
}

/// `postgres://u@h:5432/admin?x=y` -> `postgres://u@h:5432/<name>?x=y`
fn with_database(admin: &str, name: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin, None),
    };
    // Keep scheme and authority; replace the path (the database name), if any.
    let authority = base.find("://").map_or(0, |i| i + 3);
    let prefix = &base[..base[authority..].find('/').map_or(base.len(), |i| authority + i)];
    match query {
        Some(q) => format!("{prefix}/{name}?{q}"),
        None => format!("{prefix}/{name}"),
    }
}

async fn admin_connection(admin: &str) -> anyhow::Result<sqlx::AnyConnection> {
    <sqlx::AnyConnection as sqlx::Connection>::connect(admin).await.context("connecting to the PostgreSQL admin URL")
}

impl PgDatabase {
    async fn create(admin: &str) -> anyhow::Result<PgDatabase> {
        let name = format!("meshfleet_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin_connection(admin).await?;
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.with_context(|| format!("creating database {name}"))?;
        Ok(PgDatabase { admin: admin.to_owned(), url: with_database(admin, &name), name })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Its own runtime on its own thread: Drop may run inside (or outside) another runtime.
        let dropped = std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let mut conn = admin_connection(&admin).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await?;
                Ok(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => eprintln!("[postgres] dropped database {}", self.name),
            Ok(Err(e)) => eprintln!("[postgres] WARNING: could not drop database {}: {e:#}", self.name),
            Err(_) => eprintln!("[postgres] WARNING: dropping database {} panicked", self.name),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Set-up over HTTP (sign up, log in) and through the store (seeding).

async fn post_json(client: &reqwest::Client, url: String, body: Value) -> anyhow::Result<(reqwest::StatusCode, Value)> {
    let resp = client.post(&url).json(&body).send().await.with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

/// Signs up a user with a new organization and logs in: (access token, organization).
async fn sign_up_and_log_in(client: &reqwest::Client, base: &str) -> anyhow::Result<(String, OrgId)> {
    let email = "bench@example.com";
    let (status, body) =
        post_json(client, format!("{base}/api/v1/signup"), json!({ "email": email, "password": PASSWORD, "organization": "Benchmark Org" })).await?;
    if status != reqwest::StatusCode::CREATED {
        bail!("signup: {status} {body}");
    }
    let (status, body) = post_json(client, format!("{base}/api/v1/login"), json!({ "email": email, "password": PASSWORD })).await?;
    if status != reqwest::StatusCode::OK {
        bail!("login: {status} {body}");
    }
    let token = body["access_token"].as_str().ok_or_else(|| anyhow!("login: no access_token in {body}"))?.to_owned();
    let org = body["organization_id"].as_str().ok_or_else(|| anyhow!("login: no organization_id in {body}"))?.parse()?;
    Ok((token, org))
}

/// Inserts `n` clusters with four labels each into `org`, in one transaction, in shuffled
/// name order (so the table's physical order is not the listing order). Returns the time taken.
async fn seed(state: &AppState, org: OrgId, n: usize) -> anyhow::Result<Duration> {
    const PREFIXES: [&str; 5] = ["api", "batch", "data", "edge", "web"];
    const ENVS: [&str; 3] = ["prod", "staging", "dev"];
    const REGIONS: [&str; 6] = ["eu-west-1", "eu-central-1", "us-east-1", "us-west-2", "ap-south-1", "ap-northeast-1"];
    const TIERS: [&str; 3] = ["web", "api", "data"];
    const STATUSES: [&str; 8] = ["connected", "connected", "connected", "connected", "connected", "stale", "disconnected", "pending"];

    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(42));
    let now = state.clock.now_ms();
    let started = Instant::now();
    let mut tx = state.db.pool.begin().await?;
    for (k, &i) in order.iter().enumerate() {
        let mut labels = Labels::new();
        labels.insert("env".into(), ENVS[i % ENVS.len()].into());
        labels.insert("region".into(), REGIONS[i % REGIONS.len()].into());
        labels.insert("tier".into(), TIERS[(i / 7) % TIERS.len()].into());
        labels.insert("team".into(), format!("team-{:02}", i % 20));
        let status = STATUSES[i % STATUSES.len()];
        let created_at = now - (n - k) as i64 * 1000;
        let cluster = Cluster {
            id: ClusterId::new(),
            org_id: org,
            name: format!("{}-{i:05}", PREFIXES[i % PREFIXES.len()]),
            labels,
            status: status.into(),
            created_at,
            updated_at: created_at,
            last_seen_at: (status != "pending").then_some(now - (i % 300) as i64 * 1000),
            agent_version: (status != "pending").then(|| "0.1.0".to_owned()),
            kubernetes_version: (status != "pending").then(|| format!("v1.{}.{}", 28 + i % 4, i % 9)),
        };
        store::clusters::insert(&mut tx, &cluster).await.with_context(|| format!("inserting cluster {}", cluster.name))?;
    }
    tx.commit().await?;
    Ok(started.elapsed())
}

/// Walks the whole list page by page, checking it, and returns every `next_cursor` seen.
async fn collect_cursors(client: &reqwest::Client, base: &str, token: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let mut cursors = Vec::new();
    let mut seen = 0usize;
    let mut last_name: Option<String> = None;
    let mut cursor: Option<String> = None;
    for _ in 0..=n / PAGE + 1 {
        let url = match &cursor {
            Some(c) => format!("{base}/api/v1/clusters?limit={PAGE}&cursor={c}"),
            None => format!("{base}/api/v1/clusters?limit={PAGE}"),
        };
        let resp = client.get(&url).bearer_auth(token).send().await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        if status != reqwest::StatusCode::OK {
            bail!("GET {url}: {status} {body}");
        }
        for item in body["items"].as_array().ok_or_else(|| anyhow!("no items in {body}"))? {
            let name = item["name"].as_str().unwrap_or_default().to_owned();
            if last_name.as_ref().is_some_and(|l| *l >= name) {
                bail!("the list is not in strictly increasing name order at {name:?}");
            }
            last_name = Some(name);
            seen += 1;
        }
        match body["next_cursor"].as_str() {
            Some(c) => {
                cursors.push(c.to_owned());
                cursor = Some(c.to_owned());
            }
            None => break,
        }
    }
    if seen != n {
        bail!("walking the list returned {seen} clusters, expected {n}");
    }
    Ok(cursors)
}

// ---------------------------------------------------------------------------------------------
// Load generation.

struct Target {
    label: &'static str,
    /// Paths to request, one picked at random per request.
    paths: Vec<String>,
    auth: bool,
    is_list: bool,
    /// Measured for comparison only, without a goal.
    reference: bool,
}

#[derive(Default)]
struct WorkerResult {
    latencies_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    bytes: u64,
    last_done: Option<Instant>,
}

struct Measurement {
    engine: Engine,
    label: &'static str,
    is_list: bool,
    reference: bool,
    requests: usize,
    errors: u64,
    first_error: Option<String>,
    rps: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    mean_bytes: f64,
    /// Cores busy during the measured window: (this process: server + load generator, others).
    cpu: Option<(f64, f64)>,
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    client: reqwest::Client,
    base: Arc<str>,
    token: Option<Arc<str>>,
    paths: Arc<Vec<String>>,
    seed: u64,
    warm_end: Instant,
    end: Instant,
) -> WorkerResult {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = WorkerResult::default();
    loop {
        let started = Instant::now();
        if started >= end {
            break;
        }
        let path = &paths[rng.gen_range(0..paths.len())];
        let mut req = client.get(format!("{base}{path}"));
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        let result = async {
            let resp = req.send().await?;
            let status = resp.status();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, body.len()))
        }
        .await;
        let done = Instant::now();
        if started < warm_end {
            continue;
        }
        match result {
            Ok((status, len)) if status == reqwest::StatusCode::OK => {
                out.latencies_ns.push((done - started).as_nanos() as u64);
                out.bytes += len as u64;
                out.last_done = Some(done);
            }
            Ok((status, _)) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| format!("{path}: HTTP {status}"));
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| format!("{path}: {e}"));
            }
        }
    }
    out
}

fn percentile(sorted: &[u64], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Duration::from_nanos(sorted[rank - 1])
}

async fn drive(engine: Engine, clients: &[reqwest::Client], base: &str, token: &str, target: &Target, settings: &Settings) -> anyhow::Result<Measurement> {
    let base: Arc<str> = base.into();
    let token: Option<Arc<str>> = target.auth.then(|| token.into());
    let paths = Arc::new(target.paths.clone());
    let start = Instant::now();
    let warm_end = start + settings.warmup;
    let end = warm_end + settings.measure;
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(warm_end.into()).await;
        let a = cpu_sample();
        tokio::time::sleep_until(end.into()).await;
        cores_used(a, cpu_sample())
    });
    let mut tasks = Vec::with_capacity(clients.len());
    for (i, client) in clients.iter().enumerate() {
        tasks.push(tokio::spawn(worker(client.clone(), base.clone(), token.clone(), paths.clone(), i as u64 + 1, warm_end, end)));
    }
    let mut all = Vec::new();
    let (mut errors, mut bytes, mut first_error, mut last_done) = (0u64, 0u64, None, warm_end);
    for task in tasks {
        let r = task.await?;
        all.extend_from_slice(&r.latencies_ns);
        errors += r.errors;
        bytes += r.bytes;
        if first_error.is_none() {
            first_error = r.first_error;
        }
        if let Some(t) = r.last_done {
            last_done = last_done.max(t);
        }
    }
    all.sort_unstable();
    // Requests started within the window; the window closes when the last of them finished.
    let window = (last_done - warm_end).max(settings.measure).as_secs_f64();
    Ok(Measurement {
        engine,
        label: target.label,
        is_list: target.is_list,
        reference: target.reference,
        requests: all.len(),
        errors,
        first_error,
        rps: all.len() as f64 / window,
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
        max: all.last().map(|&n| Duration::from_nanos(n)).unwrap_or_default(),
        mean_bytes: if all.is_empty() { 0.0 } else { bytes as f64 / all.len() as f64 },
        cpu: cpu.await?,
    })
}

// ---------------------------------------------------------------------------------------------
// Diagnostics: where a list request's time goes, measured without concurrency.

/// The list query as `store::clusters::list` builds it for a plain page (no selector or
/// status), with literal values for EXPLAIN. Keep in step with the store.
fn list_sql(org: OrgId, after: Option<&str>) -> String {
    let after = after.map(|a| format!(" AND c.name > '{}'", a.replace('\'', "''"))).unwrap_or_default();
    format!(
        "SELECT c.id, c.org_id, c.name, c.labels, c.status, c.created_at, c.updated_at, c.last_seen_at, \
         c.agent_version, c.kubernetes_version FROM clusters c WHERE c.org_id = '{org}'{after} ORDER BY c.name LIMIT {}",
        PAGE + 1
    )
}

async fn query_plan(state: &AppState, engine: Engine, org: OrgId, after: &str) -> anyhow::Result<Vec<String>> {
    use sqlx::Row;
    let sql = list_sql(org, Some(after));
    let lines = match engine {
        Engine::Sqlite => sqlx::query(&format!("EXPLAIN QUERY PLAN {sql}"))
            .fetch_all(&state.db.pool)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>("detail"))
            .collect::<Result<Vec<_>, _>>()?,
        Engine::Postgres => sqlx::query(&format!("EXPLAIN (ANALYZE, BUFFERS) {sql}"))
            .fetch_all(&state.db.pool)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>("QUERY PLAN"))
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(lines)
}

fn median_us(mut ns: Vec<u64>) -> f64 {
    ns.sort_unstable();
    percentile(&ns, 0.5).as_secs_f64() * 1e6
}

const DIAG_ITERATIONS: usize = 300;

/// One request's parts, each timed alone in the server's runtime: (what, median µs).
async fn server_side_breakdown(state: &AppState, token: &str, org: OrgId, cursors: &[String]) -> anyhow::Result<Vec<(String, f64)>> {
    use base64::Engine as _;
    use store::clusters::ListQuery;

    let selector = meshfleet_server::domain::labels::Selector::default();
    let names: Vec<String> =
        cursors.iter().map(|c| Ok(String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(c)?)?)).collect::<anyhow::Result<_>>()?;
    let mut rng = StdRng::seed_from_u64(7);
    let now = state.clock.now_ms();
    let claims = state.keys.verify(token, now).map_err(|e| anyhow!("verifying our own token: {e}"))?;
    let mut out = Vec::new();

    let mut t = Vec::with_capacity(DIAG_ITERATIONS);
    for _ in 0..DIAG_ITERATIONS {
        let s = Instant::now();
        std::hint::black_box(state.keys.verify(token, now).is_ok());
        t.push(s.elapsed().as_nanos() as u64);
    }
    out.push(("auth: verify the access token (Ed25519 JWT)".to_owned(), median_us(t)));

    let mut t = Vec::with_capacity(DIAG_ITERATIONS);
    for _ in 0..DIAG_ITERATIONS {
        let s = Instant::now();
        let mut conn = state.db.pool.acquire().await?;
        std::hint::black_box(store::sessions::live_role(&mut conn, claims.sid, claims.sub, claims.org, now).await?);
        drop(conn);
        t.push(s.elapsed().as_nanos() as u64);
    }
    out.push(("auth: pool acquire + session/membership query".to_owned(), median_us(t)));

    for (label, deep) in [("first page", false), ("deep pages", true)] {
        let mut t = Vec::with_capacity(DIAG_ITERATIONS);
        for _ in 0..DIAG_ITERATIONS {
            let after = deep.then(|| names[rng.gen_range(0..names.len())].as_str());
            let q = ListQuery { selector: &selector, status: None, after_name: after, limit: PAGE as u32 + 1 };
            let s = Instant::now();
            let mut conn = state.db.pool.acquire().await?;
            std::hint::black_box(store::clusters::page(&mut conn, org, &q).await?.rows()?.len());
            drop(conn);
            t.push(s.elapsed().as_nanos() as u64);
        }
        out.push((format!("list query, {label}: pool acquire + {} rows decoded", PAGE + 1), median_us(t)));
    }

    Ok(out)
}

/// Sequential requests over one keep-alive connection: the latency without queueing.
async fn unloaded_latency(base: &str, token: &str, targets: &[Target]) -> anyhow::Result<Vec<(String, f64)>> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(1).timeout(REQUEST_TIMEOUT).build()?;
    let mut rng = StdRng::seed_from_u64(11);
    let mut out = Vec::new();
    for target in targets {
        let mut t = Vec::with_capacity(DIAG_ITERATIONS);
        for i in 0..DIAG_ITERATIONS + 20 {
            let path = &target.paths[rng.gen_range(0..target.paths.len())];
            let mut req = client.get(format!("{base}{path}"));
            if target.auth {
                req = req.bearer_auth(token);
            }
            let s = Instant::now();
            let resp = req.send().await?;
            let status = resp.status();
            resp.bytes().await?;
            if status != reqwest::StatusCode::OK {
                bail!("{path}: HTTP {status}");
            }
            if i >= 20 {
                t.push(s.elapsed().as_nanos() as u64);
            }
        }
        out.push((format!("HTTP, one connection, sequential: {}", target.label), median_us(t)));
    }
    Ok(out)
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// CPU time in clock ticks (Linux): (all CPUs' total, all CPUs' busy, this process).
#[derive(Clone, Copy)]
struct CpuSample {
    total: u64,
    busy: u64,
    own: u64,
}

fn cpu_sample() -> Option<CpuSample> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4)?; // idle + iowait
    let own_stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest: Vec<&str> = own_stat.rsplit_once(')')?.1.split_whitespace().collect();
    let own = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    Some(CpuSample { total, busy: total - idle, own })
}

/// Cores kept busy between two samples: (by this process, by every other process).
fn cores_used(a: Option<CpuSample>, b: Option<CpuSample>) -> Option<(f64, f64)> {
    let (a, b) = (a?, b?);
    let cores = std::thread::available_parallelism().ok()?.get() as f64;
    let total = b.total.checked_sub(a.total).filter(|&t| t > 0)? as f64;
    let busy = b.busy.saturating_sub(a.busy) as f64;
    let own = b.own.saturating_sub(a.own) as f64;
    Some((own / total * cores, (busy - own).max(0.0) / total * cores))
}

// ---------------------------------------------------------------------------------------------
// One engine, start to finish.

fn server_config(db_url: &str, data_dir: &std::path::Path, sealing_key: &str, db_connections: u32, read_cache_ms: u64) -> anyhow::Result<Config> {
    let env = vec![
        ("MESHFLEET_LISTEN".to_string(), "127.0.0.1:0".to_string()),
        // All roles, as a single-node install runs them; no agents connect, so the gateway and
        // the worker stay idle (but for alert evaluation, below).
        ("MESHFLEET_GATEWAY_LISTEN".into(), "127.0.0.1:0".into()),
        ("MESHFLEET_DATABASE_URL".into(), db_url.to_owned()),
        ("MESHFLEET_DATA_DIR".into(), data_dir.display().to_string()),
        ("MESHFLEET_SEALING_KEY".into(), sealing_key.to_owned()),
        // 16 is the service default; stated so the figures say what they were measured with.
        ("MESHFLEET_DB_MAX_CONNECTIONS".into(), db_connections.to_string()),
        // Long enough that the token outlives any MESHFLEET_BENCH_SECS.
        ("MESHFLEET_ACCESS_TOKEN_TTL_SECS".into(), "86400".into()),
        ("MESHFLEET_LOG".into(), "warn".into()),
        // The default (1000) serves repeated pages and token checks from memory; 0 measures
        // what each request costs without it, i.e. what a cache miss costs.
        ("MESHFLEET_READ_CACHE_MS".into(), read_cache_ms.to_string()),
        // Alert evaluation assesses all 10,000 clusters every second, and would be measured here
        // as noise on both sides; its cost is the alert benchmark's to show.
        ("MESHFLEET_ALERT_EVALUATION_MS".into(), "3600000".into()),
    ];

    Config::load(None, &env, &[]).map_err(|e| anyhow!("{e}"))
}

struct EngineReport {
    engine: Engine,
    measurements: Vec<Measurement>,
    plan: Vec<String>,
    breakdown: Vec<(String, f64)>,
}

fn run_engine(engine: Engine, settings: &Settings, load_rt: &tokio::runtime::Runtime) -> anyhow::Result<EngineReport> {
    let tag = engine.as_str();
    let dir = tempfile::tempdir()?;
    let pg = match engine {
        Engine::Sqlite => None,
        Engine::Postgres => {
            let admin = settings.postgres.as_deref().expect("checked by the caller");
            let db = load_rt.block_on(PgDatabase::create(admin))?;
            eprintln!("[{tag}] created database {}", db.name);
            Some(db)
        }
    };
    let url = match &pg {
        Some(db) => db.url.clone(),
        None => meshfleet_server::db::sqlite_url_in(dir.path())?,
    };
    let sealing_key = Sealer::generate_key();
    let config = server_config(&url, dir.path(), &sealing_key, settings.db_connections, 1000)?;

    // The server gets its own 2-worker runtime: what `#[tokio::main]` gives the binary on the
    // 2-core development machine.
    let server_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("server").enable_all().build()?;
    let server = server_rt.block_on(Server::start(config))?;
    let state = server.state.clone();
    let base = format!("http://{}", server.addr);
    eprintln!("[{tag}] server listening on {base}");

    let result = (|| -> anyhow::Result<EngineReport> {
        let setup_client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()?;
        let (token, org) = load_rt.block_on(sign_up_and_log_in(&setup_client, &base))?;

        let seed_time = server_rt.block_on(seed(&state, org, settings.clusters))?;
        let rows = settings.clusters * 5;
        eprintln!(
            "[{tag}] seeded {} clusters ({} rows with labels) in one transaction: {:.2} s ({:.0} rows/s)",
            settings.clusters,
            rows,
            seed_time.as_secs_f64(),
            rows as f64 / seed_time.as_secs_f64()
        );
        if engine == Engine::Postgres {
            // Autovacuum would analyze a table after a bulk insert like this within a minute
            // or so; measure the steady state rather than the first minute after a bulk load.
            server_rt.block_on(async {
                sqlx::query("ANALYZE clusters").execute(&state.db.pool).await?;
                sqlx::query("ANALYZE cluster_labels").execute(&state.db.pool).await
            })?;
        }

        let cursors = load_rt.block_on(collect_cursors(&setup_client, &base, &token, settings.clusters))?;
        eprintln!("[{tag}] walked the list: {} pages in name order, {} cursors for deep pages", cursors.len() + 1, cursors.len());

        let clients = (0..settings.connections)
            .map(|_| reqwest::Client::builder().pool_max_idle_per_host(1).tcp_nodelay(true).timeout(REQUEST_TIMEOUT).build())
            .collect::<Result<Vec<_>, _>>()?;
        let targets = [
            Target { label: "GET /healthz", paths: vec!["/healthz".into()], auth: false, is_list: false, reference: false },
            Target {
                label: "GET /api/v1/clusters?limit=100 (first page)",
                paths: vec![format!("/api/v1/clusters?limit={PAGE}")],
                auth: true,
                is_list: true,
                reference: false,
            },
            Target {
                label: "GET /api/v1/clusters?limit=100&cursor=<random> (deep pages)",
                paths: cursors.iter().map(|c| format!("/api/v1/clusters?limit={PAGE}&cursor={c}")).collect(),
                auth: true,
                is_list: true,
                reference: false,
            },
        ];
        let mut out = Vec::new();
        for target in &targets {
            let m = load_rt.block_on(drive(engine, &clients, &base, &token, target, settings))?;
            eprintln!(
                "[{tag}] {:<62} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} requests, {} errors; cores busy: {})",
                m.label,
                m.rps,
                ms(m.p50),
                ms(m.p99),
                m.requests,
                m.errors,
                m.cpu.map(|(own, other)| format!("{own:.2} bench, {other:.2} other")).unwrap_or_else(|| "?".into())
            );
            out.push(m);
        }

        // The same deep pages from a second server on the same database with the read cache
        // off: what every request would cost without it, and what a miss costs.
        let uncached = server_rt.block_on(Server::start(server_config(&url, dir.path(), &sealing_key, settings.db_connections, 0)?))?;
        let uncached_base = format!("http://{}", uncached.addr);
        let target = Target {
            label: "same deep pages, read cache off (what a miss costs)",
            paths: targets[2].paths.clone(),
            auth: true,
            is_list: true,
            reference: true,
        };
        let m = load_rt.block_on(drive(engine, &clients, &uncached_base, &token, &target, settings))?;
        eprintln!("[{tag}] {:<62} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms", m.label, m.rps, ms(m.p50), ms(m.p99));
        out.push(m);
        drop(clients);

        let deepest = cursors.last().and_then(|c| {
            use base64::Engine as _;
            String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(c).ok()?).ok()
        });
        let plan = server_rt.block_on(query_plan(&state, engine, org, deepest.as_deref().unwrap_or("")))?;
        let mut breakdown = server_rt.block_on(server_side_breakdown(&state, &token, org, &cursors))?;
        breakdown.extend(load_rt.block_on(unloaded_latency(&uncached_base, &token, &targets))?);
        let uncached_state = uncached.state.clone();
        server_rt.block_on(async {
            tokio::time::timeout(REQUEST_TIMEOUT, uncached.stop()).await.map_err(|_| anyhow!("the second server did not stop"))??;
            uncached_state.db.pool.close().await;
            anyhow::Ok(())
        })?;
        // [0] verify, [1] session, [2] query first, [3] query deep, [4] healthz, [5] first, [6] deep
        if let [(_, verify), (_, session), (_, q_first), (_, q_deep), (_, _), (_, h_first), (_, h_deep)] = breakdown[..] {
            breakdown.push(("remainder of an unloaded first-page request (HTTP both ends, routing, JSON)".into(), h_first - verify - session - q_first));
            breakdown.push(("remainder of an unloaded deep-page request (HTTP both ends, routing, JSON)".into(), h_deep - verify - session - q_deep));
        }
        Ok(EngineReport { engine, measurements: out, plan, breakdown })
    })();

    // Tear down in order: connections, server, pool, runtime, database.
    let stopped = server_rt.block_on(async {
        tokio::time::timeout(REQUEST_TIMEOUT, server.stop()).await.map_err(|_| anyhow!("the server did not stop within {REQUEST_TIMEOUT:?}"))??;
        state.db.pool.close().await;
        anyhow::Ok(())
    });
    drop(state);
    server_rt.shutdown_timeout(Duration::from_secs(5));
    drop(pg);
    if let Err(e) = stopped {
        eprintln!("[{tag}] WARNING: {e:#}");
    }
    result
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    sqlx::any::install_default_drivers();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    println!("meshfleet-server: listing clusters{}", if settings.smoke { " (SMOKE RUN: not a measurement; use cargo bench)" } else { "" });
    println!(
        "  {} clusters in one organization, 4 labels each; pages of {PAGE}; {} keep-alive connections, closed loop; {:.1} s warm-up + {:.1} s measured per endpoint",
        settings.clusters,
        settings.connections,
        settings.warmup.as_secs_f64(),
        settings.measure.as_secs_f64()
    );
    println!("  NOTE: the load generator shares this {cores}-core machine with the server (separate tokio runtimes, 2 workers each, loopback TCP)");
    println!(
        "  cpu us/oth: cores busy during the window in this process (server + load generator) / in all other processes: ~0 on SQLite unless something else runs; PostgreSQL's own processes on PostgreSQL"
    );
    if let Some(l) = load_average() {
        println!("  load average at start: {l:.2}{}", if l > 1.0 { " (WARNING: something else is using the CPU; see the cpu column)" } else { "" });
    }
    if settings.postgres.is_none() {
        println!("  PostgreSQL: SKIPPED (set MESHFLEET_TEST_POSTGRES_URL or MESHFLEET_BENCH_POSTGRES_URL to include it)");
    }

    let load_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("load").enable_all().build()?;
    let mut engines = vec![Engine::Sqlite];
    if settings.postgres.is_some() {
        engines.push(Engine::Postgres);
    }
    let mut reports = Vec::new();
    for engine in engines {
        reports.push(run_engine(engine, &settings, &load_rt).with_context(|| format!("benchmarking on {}", engine.as_str()))?);
    }
    load_rt.shutdown_timeout(Duration::from_secs(5));
    let results: Vec<&Measurement> = reports.iter().flat_map(|r| &r.measurements).collect();

    println!();
    println!(
        "{:<9} {:<62} {:>9} {:>8} {:>8} {:>8} {:>8} {:>11} {:>7}  goal (>= 1/3 of healthz req/s, p99 < 20 ms)",
        "engine", "endpoint", "req/s", "p50 ms", "p99 ms", "max ms", "KiB/resp", "cpu us/oth", "vs hz"
    );
    let mut failed = 0;
    for &m in &results {
        let healthz = results.iter().find(|h| h.engine == m.engine && !h.is_list).map(|h| h.rps).unwrap_or(0.0);
        let ratio = if healthz > 0.0 { m.rps / healthz } else { 0.0 };
        let verdict = if !m.is_list {
            "baseline".to_owned()
        } else if m.reference {
            "for comparison (no goal)".to_owned()
        } else {
            let mut misses = Vec::new();
            if ratio < GOAL_RATIO {
                misses.push(format!("throughput {ratio:.2}x < 0.33x"));
            }
            if m.p99 >= GOAL_P99 {
                misses.push(format!("p99 {:.1} ms >= 20 ms", ms(m.p99)));
            }
            if m.errors > 0 {
                misses.push(format!("{} errors", m.errors));
            }
            if misses.is_empty() {
                "PASS".to_owned()
            } else {
                failed += 1;
                format!("FAIL: {}", misses.join(", "))
            }
        };
        println!(
            "{:<9} {:<62} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.1} {:>11} {:>7}  {verdict}",
            m.engine.as_str(),
            m.label,
            m.rps,
            ms(m.p50),
            ms(m.p99),
            ms(m.max),
            m.mean_bytes / 1024.0,
            m.cpu.map(|(own, other)| format!("{own:.2}/{other:.2}")).unwrap_or_else(|| "?".into()),
            if m.is_list { format!("{ratio:.2}x") } else { "-".into() },
        );
        if let Some(e) = &m.first_error {
            println!("          first error: {e}");
        }
    }
    for r in &reports {
        println!();
        println!("{}: where an uncached list request's time goes (median of {DIAG_ITERATIONS}, one at a time, no concurrency)", r.engine.as_str());
        for (what, us) in &r.breakdown {
            println!("  {us:>9.1} µs  {what}");
        }
        println!("{}: plan of the deepest page's query:", r.engine.as_str());
        for line in &r.plan {
            println!("  {line}");
        }
    }
    println!();
    println!("{}", if failed == 0 { "All list endpoints meet the goal.".to_owned() } else { format!("{failed} list measurement(s) miss the goal.") });
    if settings.smoke {
        // The smoke run checks the harness works, not the figures.
        let errors: u64 = results.iter().map(|m| m.errors).sum();
        if errors > 0 {
            bail!("{errors} requests failed during the smoke run");
        }
    }
    Ok(())
}
