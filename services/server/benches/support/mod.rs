//! What the benchmarks share: the machine's load, percentiles, a fresh PostgreSQL database per
//! run, sums over the Prometheus text format, a signed-up owner, local webhook receivers, an
//! in-process server started the way the dashboard benchmark starts it, and a fleet of
//! registered agents (`agents`). Each bench uses part of it.
#![allow(dead_code)]

pub mod agents;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meshfleet_server::config::Config;
use meshfleet_server::secrets::Sealer;
use meshfleet_server::Server;
use meshfleet_test_support::process::{clean_command, cpu_ticks, free_port, terminate, Output};
use serde_json::{json, Value};
use tokio::sync::mpsc;

pub const PASSWORD: &str = "correct horse battery staple";

pub fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The machine's 1-minute load average (2 cores shared with other engineers' builds).
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok())).unwrap_or(f64::NAN)
}

/// Nearest-rank percentile of sorted samples (p in 0..=100).
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// `VmRSS` of a process in KiB (`self` for this one).
pub fn rss_kb(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// The admin URL of the benchmark PostgreSQL, when one is configured.
pub fn pg_admin() -> Option<String> {
    std::env::var("MESHFLEET_BENCH_POSTGRES_URL").ok().or_else(|| std::env::var("MESHFLEET_TEST_POSTGRES_URL").ok()).filter(|u| !u.is_empty())
}

/// A database of its own for one run, dropped by `drop_pg_db`.
pub struct PgDb {
    admin: String,
    name: String,
    pub url: String,
}

pub async fn create_pg_db(admin: &str) -> anyhow::Result<PgDb> {
    use sqlx::Connection;
    let name = format!("meshfleet_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(admin).await.context("connecting to the benchmark PostgreSQL")?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.context("creating the benchmark database")?;
    let _ = conn.close().await;
    let base = admin.split('?').next().unwrap_or(admin);
    let base = base.rsplit_once('/').map(|(b, _)| b).unwrap_or(base);
    Ok(PgDb { admin: admin.to_owned(), url: format!("{base}/{name}"), name })
}

pub async fn drop_pg_db(db: &PgDb) {
    use sqlx::Connection;
    if let Ok(mut conn) = sqlx::PgConnection::connect(&db.admin).await {
        if let Err(e) = sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name)).execute(&mut conn).await {
            eprintln!("warning: could not drop {}: {e}", db.name);
        }
        let _ = conn.close().await;
    }
}

/// The engines to run: SQLite always, PostgreSQL when configured.
pub fn engines() -> Vec<&'static str> {
    let mut engines = vec!["sqlite"];
    if pg_admin().is_some() {
        engines.push("postgres");
    }
    engines
}

/// A database URL for `engine` (a file in `dir`, or a fresh PostgreSQL database).
pub async fn database(engine: &str, dir: &std::path::Path) -> anyhow::Result<(String, Option<PgDb>)> {
    match engine {
        "sqlite" => Ok((meshfleet_server::db::sqlite_url_in(dir)?, None)),
        _ => {
            let pg = create_pg_db(&pg_admin().context("no PostgreSQL URL")?).await?;
            Ok((pg.url.clone(), Some(pg)))
        }
    }
}

/// The server in this process, on 127.0.0.1:0, with `extra` settings (`MESHFLEET_…`).
pub async fn start_in_process(url: &str, dir: &std::path::Path, extra: &[(&str, &str)]) -> anyhow::Result<Server> {
    let mut env = vec![
        ("MESHFLEET_LISTEN".to_string(), "127.0.0.1:0".to_string()),
        ("MESHFLEET_GATEWAY_LISTEN".into(), "127.0.0.1:0".into()),
        ("MESHFLEET_DATABASE_URL".into(), url.to_owned()),
        ("MESHFLEET_DATA_DIR".into(), dir.display().to_string()),
        ("MESHFLEET_SEALING_KEY".into(), Sealer::generate_key()),
        ("MESHFLEET_LOG".into(), std::env::var("MESHFLEET_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into())),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = Config::load(None, &env, &[]).map_err(|e| anyhow::anyhow!("configuration: {e:?}"))?;
    Server::start(config).await
}

pub async fn http_json(req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
    let resp = req.timeout(Duration::from_secs(30)).send().await.with_context(|| what.to_owned())?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{what}: {status} {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Signs up `bench@example.com` and returns its access token and organization id.
pub async fn owner(http: &reqwest::Client, base: &str) -> anyhow::Result<(String, String)> {
    http_json(
        http.post(format!("{base}/api/v1/signup")).json(&json!({ "email": "bench@example.com", "password": PASSWORD, "organization": "Bench" })),
        "sign up",
    )
    .await?;
    let login = http_json(http.post(format!("{base}/api/v1/login")).json(&json!({ "email": "bench@example.com", "password": PASSWORD })), "log in").await?;
    let token = login["access_token"].as_str().context("no access token")?.to_owned();
    let org = login["organization_id"].as_str().context("no organization id")?.to_owned();
    Ok((token, org))
}

/// A webhook channel of the owner's organization pointing at `url`; returns its id.
pub async fn webhook_channel(http: &reqwest::Client, base: &str, token: &str, name: &str, url: &str) -> anyhow::Result<String> {
    let body = http_json(
        http.post(format!("{base}/api/v1/alert-channels")).bearer_auth(token).json(&json!({ "name": name, "kind": "webhook", "url": url })),
        "create channel",
    )
    .await?;
    Ok(body["id"].as_str().context("no channel id")?.to_owned())
}

/// One request a receiver got: when, and its body.
pub struct Receipt {
    pub at: Instant,
    pub body: String,
}

/// An HTTP receiver on 127.0.0.1:0 answering `POST /hook` with 200, or never (`hang`), and
/// passing every request it gets to `got` the moment it has read it.
pub async fn receiver(hang: bool, got: mpsc::UnboundedSender<Receipt>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let at = Instant::now();
            let _ = got.send(Receipt { at, body });
            async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                "ok"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// Sum of the samples whose metric name ends with `name` and whose labels contain every `label`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric_name = series.split('{').next()?;
            (metric_name.ends_with(name) && labels.iter().all(|lab| series.contains(lab))).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The real `meshfleet-server` binary in its own process (so its CPU is its own), stopped
/// (SIGTERM, then SIGKILL) when dropped.
pub struct ServerProc {
    child: Child,
    pub pid: u32,
    pub api: String,
    pub output: Output,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(15));
    }
}

/// Starts the server binary on free ports with the database at `url`, data in `dir`, and
/// `extra` settings (`MESHFLEET_…`); returns once `/healthz` answers.
pub async fn start_server(url: &str, dir: &std::path::Path, extra: &[(&str, &str)]) -> anyhow::Result<ServerProc> {
    let (api_port, gateway_port) = (free_port(), free_port());
    let mut cmd = clean_command(env!("CARGO_BIN_EXE_meshfleet-server"));
    cmd.env("MESHFLEET_LISTEN", format!("127.0.0.1:{api_port}"))
        .env("MESHFLEET_GATEWAY_LISTEN", format!("127.0.0.1:{gateway_port}"))
        .env("MESHFLEET_DATA_DIR", dir)
        .env("MESHFLEET_SEALING_KEY", Sealer::generate_key())
        .env("MESHFLEET_LOG", std::env::var("MESHFLEET_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("MESHFLEET_DATABASE_URL", url);
    cmd.envs(extra.iter().copied());
    let mut child = cmd.spawn().context("starting meshfleet-server")?;
    let pid = child.id();
    let output = Output::capture(&mut child);
    let server = ServerProc { child, pid, api: format!("http://127.0.0.1:{api_port}"), output };
    let http = reqwest::Client::new();
    let started = Instant::now();
    while http.get(format!("{}/healthz", server.api)).send().await.map(|r| r.status().is_success()).ok() != Some(true) {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the server did not answer /healthz within 60 s:\n{}", server.output.tail());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(server)
}

pub async fn scrape(api: &str) -> String {
    match reqwest::Client::new().get(format!("{api}/metrics")).timeout(Duration::from_secs(30)).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// utime+stime of every `postgres` process on the machine, in clock ticks.
pub fn postgres_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres"))
        .map(cpu_ticks)
        .sum()
}

/// The demo fleet (`meshfleet_sim::run`, the `meshfleet-sim` code) against a server, running in
/// this process until stopped.
pub struct DemoFleet {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<meshfleet_sim::FleetStatus, meshfleet_sim::SimError>>,
    /// How long until every agent was connected.
    pub setup: Duration,
}

impl DemoFleet {
    /// Starts `clusters` clusters (`sim-NNNN`, reporting every 10 s, state in `state_dir`) as
    /// the owner `token`, and returns once the server counts them all connected (300 s at most).
    pub async fn connected(server: &ServerProc, token: &str, clusters: usize, state_dir: std::path::PathBuf) -> anyhow::Result<DemoFleet> {
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let config = meshfleet_sim::FleetConfig {
            api_url: server.api.clone(),
            auth: meshfleet_sim::Auth::Token(secrecy::SecretString::from(token.to_owned())),
            clusters,
            prefix: "sim".into(),
            state_dir,
            metrics_interval: Duration::from_secs(10),
            status_interval: Duration::from_secs(3600),
            agent_version: "0.1.0".into(),
            setup_concurrency: 16,
            bad_upgrade_share: 0.0,
        };
        let task = tokio::spawn(meshfleet_sim::run(config, async move {
            let _ = stop_rx.await;
        }));
        let started = Instant::now();
        loop {
            let connected = metric(&scrape(&server.api).await, "gateway_connected_agents", &[]);
            if connected as usize >= clusters {
                return Ok(DemoFleet { stop, task, setup: started.elapsed() });
            }
            if task.is_finished() || started.elapsed() > Duration::from_secs(300) {
                bail!("{connected} of {clusters} agents connected after {:?}:\n{}", started.elapsed(), server.output.tail());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Shuts every client down gracefully (30 s at most).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

/// The bench's own connection to the server's database (with the engine's own driver), for
/// reading what the server wrote; each bench adds the queries it needs.
pub struct Db {
    pub pg: Option<sqlx::PgPool>,
    pub sqlite: Option<sqlx::SqlitePool>,
}

impl Db {
    pub async fn open(url: &str) -> anyhow::Result<Db> {
        if url.starts_with("postgres") {
            Ok(Db { pg: Some(sqlx::PgPool::connect(url).await?), sqlite: None })
        } else {
            Ok(Db { pg: None, sqlite: Some(sqlx::SqlitePool::connect(url).await?) })
        }
    }

    /// PostgreSQL's committed transactions and rows written in this database so far.
    pub async fn pg_stats(&self) -> Option<(i64, i64)> {
        let pg = self.pg.as_ref()?;
        let sql = "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted FROM pg_stat_database WHERE datname = current_database()";
        // The statistics collector reports with a short delay; a snapshot is taken at once.
        let _ = sqlx::query("SELECT pg_stat_clear_snapshot()").execute(pg).await;
        sqlx::query_as::<_, (i64, i64)>(sql).fetch_one(pg).await.ok()
    }
}
