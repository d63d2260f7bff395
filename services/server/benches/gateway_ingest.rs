//! The agent gateway under a fleet: how many agents one server holds and what each costs in
//! server memory, and how fast reports are stored and acknowledged, batched write path against
//! one-insert-per-report, on SQLite and (when configured) PostgreSQL. Baselines run in the same
//! run, because the machines are noisy.
//!
//! Goals (issue 3, "Performance"): 10,000 concurrently connected agents at no more than 150 KB of
//! server memory each; at least 5,000 reports/s stored on PostgreSQL with p99 acknowledgement
//! under 100 ms; the batched write path at least 5x one-insert-per-report.
//!
//! Run:   cargo bench -p meshfleet-server --bench gateway_ingest
//! With PostgreSQL: MESHFLEET_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres (or
//! MESHFLEET_BENCH_POSTGRES_URL; it wins). Each server run gets a fresh database
//! `meshfleet_bench_<uuid>`, dropped afterwards.
//! Knobs: MESHFLEET_BENCH_AGENTS (part 1, default 10000), MESHFLEET_BENCH_INGEST_AGENTS (part 2,
//! default 200), MESHFLEET_BENCH_WINDOW (unacknowledged reports per agent, default 32),
//! MESHFLEET_BENCH_SECS (measured seconds per run, default 10), MESHFLEET_BENCH_WARMUP_SECS
//! (default 2), MESHFLEET_BENCH_PACED_RATE (offered reports/s of the latency run, default 5000).
//!
//! Method. The server is the real `meshfleet-server` binary in its own process (its default
//! tokio runtime: 2 workers here), configured through the environment, listening on
//! 127.0.0.1:0. Everything else (the API client, the agents) runs in this process; both share
//! the machine's 2 cores (and other engineers' builds), so absolute figures understate a
//! dedicated server.
//!
//! Part 1 (SQLite): N clusters are created through the API and N agents registered through the
//! gateway (each its own key and certificate), then N real agent clients
//! (`meshfleet_agent::spawn` with a synthetic cluster: mTLS stream, snapshot on connect,
//! heartbeats every 10 s, keepalive) connect in waves; an agent counts once its snapshot is
//! acknowledged. Server memory is VmRSS of the server process right before the first agent
//! connects (after registration) and with all N connected after a settle period; the
//! difference over N is the cost per agent. Server CPU is sampled while the fleet idles.
//!
//! Part 2: K raw gRPC+mTLS agents (own identities), each streaming Metrics reports (the
//! synthetic cluster's 3-10 workloads, consecutive 10-second windows) with at most W
//! unacknowledged, for a warm-up and then a measured period. Reports/s stored = acks received
//! in the measured period / its length; time to acknowledgement is measured client-side per
//! report (send -> the Ack covering its seq). Two server configurations per engine: the
//! default (batched) write path and MESHFLEET_INGEST_BATCH_MAX=1 + MESHFLEET_INGEST_WRITERS=1
//! (one transaction per report). A closed loop at saturation has W*K reports queued by
//! construction, so its latency is Little's law (W*K / throughput); the p99 goal is therefore
//! measured in a second, open-loop run at the goal's rate (MESHFLEET_BENCH_PACED_RATE spread over
//! the K agents), and a third at half the batched saturated throughput (latency when the
//! server keeps up). The per-agent rate limit is raised for part 2 (MESHFLEET_GATEWAY_RATE_PER_SEC)
//! so that the limiter, not the write path, is never what is measured. After each run every
//! sent report must be acknowledged and the server's stored-report counter must agree.
//!
//! Without `--bench` (e.g. `cargo test --all-targets`) it runs a seconds-long smoke version.

mod support;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures::{StreamExt, TryStreamExt};
use meshfleet_agent::{AgentHandle, ClientConfig, Identity};
use meshfleet_agent_protocol::v1::agent_gateway_client::AgentGatewayClient;
use meshfleet_agent_protocol::v1::{self, agent_message::Body, server_message, AgentMessage, ServerMessage};
use meshfleet_agent_protocol::MAX_MESSAGE_BYTES;
use meshfleet_server::db::Engine;
use meshfleet_server::secrets::Sealer;
use meshfleet_sim::{synthetic_cluster, SharedCluster, SyntheticCluster};
use meshfleet_test_support::process::{clock_ticks_per_sec, cpu_ticks};
use rand::Rng;
use support::agents::{raise_nofile, seed, setup_fleet, tls_endpoint, Fleet};
use support::{create_pg_db, drop_pg_db, metric, PgDb};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const GOAL_AGENTS: usize = 10_000;
const GOAL_KB_PER_AGENT: f64 = 150.0;
const GOAL_PG_RPS: f64 = 5_000.0;
const GOAL_P99: Duration = Duration::from_millis(100);
const GOAL_RATIO: f64 = 5.0;
/// Agents connected at once in part 1 before waiting for them.
const WAVE: usize = 500;
const WAVE_TIMEOUT: Duration = Duration::from_secs(120);
const SETTLE: Duration = Duration::from_secs(8);
const CPU_SAMPLE: Duration = Duration::from_secs(10);
const SETUP_CONCURRENCY: usize = 32;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

struct Knobs {
    smoke: bool,
    agents: usize,
    ingest_agents: usize,
    window: usize,
    secs: f64,
    warmup: f64,
    paced_rate: f64,
    pg_admin: Option<String>,
}

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

impl Knobs {
    fn from_env() -> Knobs {
        // `cargo bench` passes --bench; anything else (cargo test --all-targets) gets a smoke run.
        let smoke = !std::env::args().any(|a| a == "--bench");
        let pg_admin =
            ["MESHFLEET_BENCH_POSTGRES_URL", "MESHFLEET_TEST_POSTGRES_URL"].iter().find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()));
        if smoke {
            return Knobs { smoke, agents: 20, ingest_agents: 5, window: 8, secs: 1.0, warmup: 0.3, paced_rate: 100.0, pg_admin };
        }
        Knobs {
            smoke,
            agents: env_num("MESHFLEET_BENCH_AGENTS").unwrap_or(GOAL_AGENTS).max(1),
            ingest_agents: env_num("MESHFLEET_BENCH_INGEST_AGENTS").unwrap_or(200).max(1),
            window: env_num("MESHFLEET_BENCH_WINDOW").unwrap_or(32).max(1),
            secs: env_num("MESHFLEET_BENCH_SECS").unwrap_or(10.0f64).max(0.5),
            warmup: env_num("MESHFLEET_BENCH_WARMUP_SECS").unwrap_or(2.0f64).max(0.0),
            paced_rate: env_num("MESHFLEET_BENCH_PACED_RATE").unwrap_or(GOAL_PG_RPS).max(1.0),
            pg_admin,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server process and its database

struct ServerProc {
    child: Child,
    pid: u32,
    api: String,
    gateway: SocketAddr,
    output: meshfleet_test_support::process::Output,
    _dir: tempfile::TempDir,
    pg: Option<PgDb>,
}

impl ServerProc {
    async fn start(engine: Engine, knobs: &Knobs, env: &[(&str, String)]) -> anyhow::Result<ServerProc> {
        let dir = tempfile::tempdir()?;
        let pg = match engine {
            Engine::Sqlite => None,
            Engine::Postgres => Some(create_pg_db(knobs.pg_admin.as_deref().expect("PostgreSQL URL")).await?),
        };
        // Only this benchmark's settings reach the server.
        let mut cmd = meshfleet_test_support::process::clean_command(env!("CARGO_BIN_EXE_meshfleet-server"));
        cmd.env("MESHFLEET_LISTEN", "127.0.0.1:0")
            .env("MESHFLEET_GATEWAY_LISTEN", "127.0.0.1:0")
            .env("MESHFLEET_DATA_DIR", dir.path())
            .env("MESHFLEET_SEALING_KEY", Sealer::generate_key())
            .env("MESHFLEET_LOG", std::env::var("MESHFLEET_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(pg) = &pg {
            cmd.env("MESHFLEET_DATABASE_URL", &pg.url);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("starting meshfleet-server")?;
        let pid = child.id();
        let output = meshfleet_test_support::process::Output::capture(&mut child);
        let mut server = ServerProc { child, pid, api: String::new(), gateway: "0.0.0.0:0".parse().unwrap(), output, _dir: dir, pg };
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut api, mut gateway) = (None, None);
        while api.is_none() || gateway.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match tokio::task::block_in_place(|| server.output.stdout.recv_timeout(left)) {
                Ok(line) => line,
                Err(_) => {
                    let tail = server.tail();
                    server.stop().await;
                    bail!("the server did not print its addresses within 60 s; its output:\n{tail}");
                }
            };
            if let Some(rest) = line.split("listening on http://").nth(1) {
                api = Some(rest.trim().to_owned());
            }
            if let Some(rest) = line.split("agent gateway (gRPC, mTLS) on ").nth(1) {
                gateway = rest.trim().parse::<SocketAddr>().ok();
            }
        }
        server.api = format!("http://{}", api.unwrap());
        server.gateway = gateway.unwrap();
        Ok(server)
    }

    fn tail(&self) -> String {
        self.output.tail()
    }

    fn rss_kb(&self) -> u64 {
        rss_kb(self.pid)
    }

    fn cpu_ticks(&self) -> u64 {
        cpu_ticks(self.pid)
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM (graceful), SIGKILL after 15 s; then drops its database.
    async fn stop(mut self) {
        self.terminate();
        if let Some(pg) = self.pg.take() {
            drop_pg_db(&pg).await;
        }
    }

    fn terminate(&mut self) {
        meshfleet_test_support::process::terminate(&mut self.child, Duration::from_secs(15));
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        // A panic or early return: never leave the server running.
        self.terminate();
        if let Some(pg) = self.pg.take() {
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(drop_pg_db(&pg));
            })
            .join();
        }
    }
}

fn proc_status_kb(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn rss_kb(pid: u32) -> u64 {
    proc_status_kb(&pid.to_string(), "VmRSS:")
}

/// The machine's 1-minute load average (other engineers' builds show up here).
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok())).unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------------------------------
// The API

async fn scrape(server: &ServerProc) -> String {
    let http = reqwest::Client::new();
    match http.get(format!("{}/metrics", server.api)).timeout(CALL_TIMEOUT).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Part 1: connected agents and server memory

struct Capacity {
    target: usize,
    reached: usize,
    why_stopped: Option<String>,
    rss_start_kb: u64,
    rss_before_kb: u64,
    rss_with_kb: u64,
    register_secs: f64,
    connect_secs: f64,
    server_gauge: f64,
    sessions: u64,
    idle_cpu_pct: f64,
    bench_rss_kb: u64,
    load: f64,
    nofile: (u64, u64),
}

impl Capacity {
    fn kb_per_agent(&self) -> f64 {
        if self.reached == 0 {
            return f64::NAN;
        }
        (self.rss_with_kb as f64 - self.rss_before_kb as f64) / self.reached as f64
    }
}

async fn capacity(knobs: &Knobs) -> anyhow::Result<Capacity> {
    let nofile = raise_nofile(0);
    // Each agent is one socket in each process; leave room for the rest.
    let fit = (nofile.0 as usize).saturating_sub(512);
    let mut target = knobs.agents;
    let mut why_stopped = None;
    if target > fit {
        why_stopped = Some(format!("open-files limit {} (hard {}) fits only {fit} agents", nofile.0, nofile.1));
        target = fit;
    }
    eprintln!("== part 1: {target} agents on SQLite (open files: soft {}, hard {})", nofile.0, nofile.1);
    let mut server = ServerProc::start(Engine::Sqlite, knobs, &[]).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_start_kb = server.rss_kb();
    let t = Instant::now();
    let fleet = setup_fleet(&server.api, server.gateway, target).await?;
    let register_secs = t.elapsed().as_secs_f64();
    eprintln!("    {target} clusters created and agents registered in {register_secs:.1} s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before_kb = server.rss_kb();

    let gateway_url = format!("https://{}", server.gateway);
    let mut handles: Vec<AgentHandle> = Vec::with_capacity(target);
    let t = Instant::now();
    let mut reached = 0;
    'waves: for (w, wave) in fleet.identities.chunks(WAVE).enumerate() {
        let first = handles.len();
        for (j, id) in wave.iter().enumerate() {
            let cluster = SharedCluster::new(synthetic_cluster(seed(first + j)));
            let config = ClientConfig { agent_version: "0.1.0-bench".into(), ..ClientConfig::new(&gateway_url, &fleet.ca_pem) };
            handles.push(meshfleet_agent::spawn(config, id.clone(), Arc::new(cluster)));
        }
        let deadline = Instant::now() + WAVE_TIMEOUT;
        loop {
            let up = handles.iter().filter(|h| h.stats().last_acked_seq >= 1).count();
            if up == handles.len() {
                reached = up;
                break;
            }
            if Instant::now() >= deadline || !server.alive() {
                reached = up;
                let mut errors: BTreeMap<String, usize> = BTreeMap::new();
                for h in &handles[first..] {
                    if let Some(e) = h.stats().last_error {
                        *errors.entry(e).or_default() += 1;
                    }
                }
                why_stopped = Some(format!(
                    "wave {w}: only {up}/{} agents had their snapshot acknowledged within {}s{}; agent errors: {errors:?}; server output:\n{}",
                    handles.len(),
                    WAVE_TIMEOUT.as_secs(),
                    if server.alive() { "" } else { " (the server process died)" },
                    server.tail()
                ));
                break 'waves;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("    {} agents connected ({:.1} s); server RSS {} MB", handles.len(), t.elapsed().as_secs_f64(), server.rss_kb() / 1024);
    }
    let connect_secs = t.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let rss_with_kb = server.rss_kb();
    let hz = clock_ticks_per_sec();
    let (c0, t0) = (server.cpu_ticks(), Instant::now());
    tokio::time::sleep(CPU_SAMPLE).await;
    let idle_cpu_pct = (server.cpu_ticks() - c0) as f64 / hz / t0.elapsed().as_secs_f64() * 100.0;
    let metrics = scrape(&server).await;
    let server_gauge = metric(&metrics, "gateway_connected_agents", &[]);
    let still = handles.iter().filter(|h| h.stats().connected).count();
    let sessions: u64 = handles.iter().map(|h| h.stats().sessions).sum();
    if why_stopped.is_none() && still < reached {
        why_stopped = Some(format!("{} agents dropped their stream after connecting", reached - still));
    }
    let bench_rss_kb = rss_kb(std::process::id());
    eprintln!("    with {reached} agents: server RSS {} MB, {server_gauge} streams open at the server; stopping the fleet", rss_with_kb / 1024);
    let _ = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(handles.into_iter().map(AgentHandle::shutdown))).await;
    server.stop().await;
    Ok(Capacity {
        target,
        reached,
        why_stopped,
        rss_start_kb,
        rss_before_kb,
        rss_with_kb,
        register_secs,
        connect_secs,
        server_gauge,
        sessions,
        idle_cpu_pct,
        bench_rss_kb,
        nofile,
        load: loadavg(),
    })
}

// ---------------------------------------------------------------------------------------------
// Part 2: ingest throughput and time to acknowledgement

#[derive(Clone, Copy, PartialEq)]
enum Load {
    /// As fast as acknowledgements allow, `window` unacknowledged per agent.
    Saturate,
    /// Open loop: this many reports/s over all agents (still at most `window` unacknowledged).
    Paced(f64),
}

#[derive(Default)]
struct AgentOutcome {
    sent: u64,
    acked: u64,
    acked_in_window: u64,
    latencies_us: Vec<u32>,
    workloads: u64,
    late: u64,
    error: Option<String>,
}

struct RunResult {
    rps: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    sent: u64,
    acked: u64,
    errors: BTreeMap<String, usize>,
    stored_delta: f64,
    failed_delta: f64,
    avg_batch: f64,
    server_mean_ack: Duration,
    workloads_per_report: f64,
    late: u64,
    /// 1-minute load average of the machine at the end of the run (2 cores).
    load: f64,
}

struct RawAgent {
    tx: mpsc::Sender<AgentMessage>,
    rx: tonic::Streaming<ServerMessage>,
    cluster: SyntheticCluster,
    seq: u64,
}

/// Opens a Connect stream with Hello and a snapshot, and waits for the snapshot's Ack.
async fn open_raw(gateway: SocketAddr, ca_pem: &str, id: &Identity, i: usize, window: usize) -> anyhow::Result<RawAgent> {
    let channel = tls_endpoint(gateway, ca_pem, Some(id))?.connect().await.context("mTLS connection")?;
    let client = AgentGatewayClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel(window + 8);
    let hello = v1::Hello { agent_version: "0.1.0-bench".into(), kubernetes_version: "v1.33.1".into(), ..Default::default() };
    tx.send(AgentMessage { seq: 0, body: Some(Body::Hello(hello)) }).await?;
    let mut client = client;
    let rx = tokio::time::timeout(CALL_TIMEOUT, client.connect(ReceiverStream::new(rx)))
        .await
        .context("connect timed out")?
        .map_err(|s| anyhow!("connect: {s}"))?
        .into_inner();
    let cluster = synthetic_cluster(seed(i));
    let mut agent = RawAgent { tx, rx, seq: 1, cluster };
    agent.tx.send(AgentMessage { seq: 1, body: Some(Body::Snapshot(v1::Snapshot { inventory: Some(agent.cluster.inventory()) })) }).await?;
    loop {
        match tokio::time::timeout(CALL_TIMEOUT, agent.rx.message()).await.context("snapshot ack timed out")? {
            Ok(Some(ServerMessage { body: Some(server_message::Body::Ack(a)) })) if a.seq >= 1 => return Ok(agent),
            Ok(Some(_)) => {}
            Ok(None) => bail!("the stream closed before the snapshot was acknowledged"),
            Err(s) => bail!("stream: {s}"),
        }
    }
}

struct Phases {
    measure_from: Instant,
    measure_to: Instant,
}

async fn drive_raw(mut a: RawAgent, window: usize, interval: Option<Duration>, phases: Arc<Phases>) -> AgentOutcome {
    let mut out = AgentOutcome::default();
    let mut inflight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(window);
    // Consecutive 10-second windows, as a real agent reports them (only faster).
    let mut fake_now = meshfleet_agent_now_ms();
    let mut next_send = match interval {
        // Spread the agents over the interval so they do not send in lockstep.
        Some(iv) => tokio::time::Instant::now() + iv.mul_f64(rand::thread_rng().gen::<f64>()),
        None => tokio::time::Instant::now(),
    };
    let measure_to = tokio::time::Instant::from_std(phases.measure_to);
    loop {
        let now = Instant::now();
        let sending = now < phases.measure_to;
        if sending {
            let due = interval.is_none() || tokio::time::Instant::now() >= next_send;
            if due && inflight.len() < window {
                let mut batch = if interval.is_none() { window - inflight.len() } else { 1 };
                while batch > 0 {
                    fake_now += 10_000;
                    let m = a.cluster.next_metrics(fake_now);
                    out.workloads += m.workloads.len() as u64;
                    a.seq += 1;
                    if a.tx.try_send(AgentMessage { seq: a.seq, body: Some(Body::Metrics(m)) }).is_err() {
                        out.error = Some("the request stream is closed or full".into());
                        return out;
                    }
                    inflight.push_back((a.seq, Instant::now()));
                    out.sent += 1;
                    batch -= 1;
                }
                if let Some(iv) = interval {
                    next_send += iv;
                }
            } else if due {
                out.late += 1;
                if let Some(iv) = interval {
                    next_send += iv;
                }
            }
        } else if inflight.is_empty() {
            break;
        }
        let wake_at = if !sending {
            measure_to + DRAIN_TIMEOUT
        } else if interval.is_some() && inflight.len() < window {
            next_send.min(measure_to)
        } else {
            measure_to
        };
        match tokio::time::timeout_at(wake_at, a.rx.message()).await {
            Err(_) if !sending => {
                out.error = Some(format!("{} reports unacknowledged {} s after the run", inflight.len(), DRAIN_TIMEOUT.as_secs()));
                break;
            }
            Err(_) => {}
            Ok(Ok(Some(ServerMessage { body: Some(server_message::Body::Ack(ack)) }))) => {
                let at = Instant::now();
                let in_window = at >= phases.measure_from && at < phases.measure_to;
                while inflight.front().is_some_and(|(s, _)| *s <= ack.seq) {
                    let (_, sent_at) = inflight.pop_front().unwrap();
                    out.acked += 1;
                    if in_window {
                        out.acked_in_window += 1;
                        out.latencies_us.push(at.duration_since(sent_at).as_micros().min(u32::MAX as u128) as u32);
                    }
                }
            }
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => {
                out.error = Some("the server closed the stream".into());
                break;
            }
            Ok(Err(status)) => {
                out.error = Some(format!("stream ended: {:?} {}", status.code(), status.message()));
                break;
            }
        }
    }
    drop(a.tx);
    out
}

fn meshfleet_agent_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn pct(sorted: &[u32], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Duration::from_micros(sorted[rank.clamp(1, sorted.len()) - 1] as u64)
}

async fn ingest_run(server: &ServerProc, fleet: &Fleet, knobs: &Knobs, load: Load) -> anyhow::Result<RunResult> {
    let k = fleet.identities.len();
    let agents: Vec<RawAgent> = futures::stream::iter(fleet.identities.iter().enumerate())
        .map(|(i, id)| open_raw(server.gateway, &fleet.ca_pem, id, i, knobs.window))
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await?;
    let before = scrape(server).await;
    let start = Instant::now();
    let phases = Arc::new(Phases {
        measure_from: start + Duration::from_secs_f64(knobs.warmup),
        measure_to: start + Duration::from_secs_f64(knobs.warmup + knobs.secs),
    });
    let interval = match load {
        Load::Saturate => None,
        Load::Paced(rate) => Some(Duration::from_secs_f64(k as f64 / rate)),
    };
    let tasks: Vec<_> = agents.into_iter().map(|a| tokio::spawn(drive_raw(a, knobs.window, interval, phases.clone()))).collect();
    let mut outcomes = Vec::with_capacity(k);
    for t in tasks {
        outcomes.push(t.await?);
    }
    // Let the server's counters catch up with the last acknowledgements.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = scrape(server).await;
    let delta = |name: &str, labels: &[&str]| metric(&after, name, labels) - metric(&before, name, labels);
    let mut latencies: Vec<u32> = Vec::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let (mut sent, mut acked, mut in_window, mut workloads, mut late) = (0, 0, 0, 0, 0);
    for o in outcomes {
        sent += o.sent;
        acked += o.acked;
        in_window += o.acked_in_window;
        workloads += o.workloads;
        late += o.late;
        latencies.extend(o.latencies_us);
        if let Some(e) = o.error {
            *errors.entry(e).or_default() += 1;
        }
    }
    latencies.sort_unstable();
    let batches = delta("ingest_batch_size_count", &[]);
    let acks = delta("gateway_ack_seconds_count", &[]);
    Ok(RunResult {
        rps: in_window as f64 / knobs.secs,
        p50: pct(&latencies, 50.0),
        p99: pct(&latencies, 99.0),
        max: pct(&latencies, 100.0),
        sent,
        acked,
        errors,
        stored_delta: delta("gateway_reports_total", &["kind=\"metrics\"", "outcome=\"stored\""]),
        failed_delta: delta("gateway_reports_total", &["outcome=\"failed\""]),
        avg_batch: if batches > 0.0 { delta("ingest_batch_size_sum", &[]) / batches } else { 0.0 },
        server_mean_ack: if acks > 0.0 { Duration::from_secs_f64(delta("gateway_ack_seconds_sum", &[]) / acks) } else { Duration::ZERO },
        workloads_per_report: if sent > 0 { workloads as f64 / sent as f64 } else { 0.0 },
        late,
        load: loadavg(),
    })
}

#[derive(Clone, Copy, PartialEq)]
enum WritePath {
    Batched,
    PerReport,
}

impl WritePath {
    fn name(self) -> &'static str {
        match self {
            WritePath::Batched => "batched (default)",
            WritePath::PerReport => "one tx per report",
        }
    }
}

struct EngineResults {
    engine: Engine,
    batched: RunResult,
    per_report: RunResult,
    paced: RunResult,
    /// Paced at half the batched saturated throughput: latency when the server keeps up.
    half: RunResult,
    half_rate: f64,
}

async fn ingest_engine(engine: Engine, knobs: &Knobs) -> anyhow::Result<EngineResults> {
    let mut results = Vec::new();
    let mut paced = None;
    let mut half = None;
    for path in [WritePath::Batched, WritePath::PerReport] {
        let mut env = vec![("MESHFLEET_GATEWAY_RATE_PER_SEC", "1000000".to_string()), ("MESHFLEET_GATEWAY_RATE_BURST", "1000000".to_string())];
        if path == WritePath::PerReport {
            env.push(("MESHFLEET_INGEST_BATCH_MAX", "1".into()));
            env.push(("MESHFLEET_INGEST_WRITERS", "1".into()));
        }
        eprintln!("== part 2: {} / {}: {} agents, window {}", engine.title(), path.name(), knobs.ingest_agents, knobs.window);
        let server = ServerProc::start(engine, knobs, &env).await?;
        let fleet = setup_fleet(&server.api, server.gateway, knobs.ingest_agents).await?;
        let r = ingest_run(&server, &fleet, knobs, Load::Saturate).await?;
        eprintln!("    saturated: {:.0} reports/s, p50 {:?}, p99 {:?}", r.rps, r.p50, r.p99);
        results.push(r);
        if path == WritePath::Batched {
            let r = ingest_run(&server, &fleet, knobs, Load::Paced(knobs.paced_rate)).await?;
            eprintln!("    paced at {:.0}/s: {:.0} reports/s, p50 {:?}, p99 {:?}", knobs.paced_rate, r.rps, r.p50, r.p99);
            paced = Some(r);
            let rate = (results[0].rps * 0.5).max(1.0);
            let r = ingest_run(&server, &fleet, knobs, Load::Paced(rate)).await?;
            eprintln!("    paced at {rate:.0}/s: {:.0} reports/s, p50 {:?}, p99 {:?}", r.rps, r.p50, r.p99);
            half = Some((r, rate));
        }
        server.stop().await;
    }
    let per_report = results.pop().unwrap();
    let batched = results.pop().unwrap();
    let (half, half_rate) = half.unwrap();
    Ok(EngineResults { engine, batched, per_report, paced: paced.unwrap(), half, half_rate })
}

// ---------------------------------------------------------------------------------------------
// Report

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

fn integrity(r: &RunResult) -> String {
    let mut s = if r.acked == r.sent { format!("all {} acked", r.sent) } else { format!("{} of {} acked", r.acked, r.sent) };
    if (r.stored_delta - r.acked as f64).abs() > 0.5 {
        s += &format!("; server counted {} stored", r.stored_delta);
    } else {
        s += ", server agrees";
    }
    if r.failed_delta > 0.0 {
        s += &format!("; {} FAILED at the server", r.failed_delta);
    }
    if r.late > 0 {
        s += &format!("; {} sends fell behind (window full)", r.late);
    }
    if !r.errors.is_empty() {
        s += &format!("; agent errors {:?}", r.errors);
    }
    s
}

fn print_report(knobs: &Knobs, cap: &Capacity, engines: &[EngineResults]) {
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0);
    println!();
    println!("meshfleet-server: agent gateway ingest{}", if knobs.smoke { " (SMOKE RUN: tiny sizes, figures meaningless)" } else { "" });
    println!(
        "machine: {} cores, {} GB RAM, shared with other engineers' work; server = separate `meshfleet-server` process, agents/load generator = this process",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        mem_total / 1024 / 1024
    );
    println!();
    println!("1. Connected agents and server memory (SQLite; real agent clients: mTLS stream, snapshot, heartbeat every 10 s)");
    println!("   open-files limit (soft/hard, inherited by the server): {}/{}", cap.nofile.0, cap.nofile.1);
    println!(
        "   agents connected (snapshot acked): {} of {} targeted; server gauge {}; total sessions {} (reconnects: {})",
        cap.reached,
        cap.target,
        cap.server_gauge,
        cap.sessions,
        cap.sessions.saturating_sub(cap.reached as u64)
    );
    if let Some(why) = &cap.why_stopped {
        println!("   stopped early / degraded: {why}");
    }
    println!(
        "   setup: {} clusters created + registered in {:.1} s; connected in {:.1} s ({:.0} agents/s)",
        cap.target,
        cap.register_secs,
        cap.connect_secs,
        cap.reached as f64 / cap.connect_secs.max(0.001)
    );
    println!(
        "   server RSS: {:.1} MB at start, {:.1} MB after registration (before agents), {:.1} MB with {} agents",
        cap.rss_start_kb as f64 / 1024.0,
        cap.rss_before_kb as f64 / 1024.0,
        cap.rss_with_kb as f64 / 1024.0,
        cap.reached
    );
    println!("   => {:.1} KB of server memory per connected agent", cap.kb_per_agent());
    println!(
        "   server CPU with the fleet idle (heartbeats, revalidation): {:.0}% of one core; this process (agents) RSS {:.0} MB; load average {:.1}",
        cap.idle_cpu_pct,
        cap.bench_rss_kb as f64 / 1024.0,
        cap.load
    );
    println!();
    println!(
        "2. Ingest: {} agents, Metrics reports ({:.1} workloads each on average), at most {} unacknowledged per agent, {:.0} s warm-up + {:.0} s measured",
        knobs.ingest_agents,
        engines.first().map(|e| e.batched.workloads_per_report).unwrap_or(0.0),
        knobs.window,
        knobs.warmup,
        knobs.secs
    );
    println!(
        "   {:<11} {:<34} {:>10} {:>9} {:>9} {:>9} {:>10} {:>11} {:>5}  integrity",
        "engine", "run", "reports/s", "p50 ack", "p99 ack", "max ack", "avg batch", "server ack", "load"
    );
    for e in engines {
        let rows = [
            (format!("{} saturated", WritePath::Batched.name()), &e.batched),
            (format!("{} saturated", WritePath::PerReport.name()), &e.per_report),
            (format!("batched, paced at {:.0}/s", knobs.paced_rate), &e.paced),
            (format!("batched, paced at {:.0}/s (50%)", e.half_rate), &e.half),
        ];
        for (name, r) in rows {
            println!(
                "   {:<11} {:<34} {:>10.0} {:>9} {:>9} {:>9} {:>10.1} {:>11} {:>5.1}  {}",
                e.engine.title(),
                name,
                r.rps,
                ms(r.p50),
                ms(r.p99),
                ms(r.max),
                r.avg_batch,
                ms(r.server_mean_ack),
                r.load,
                integrity(r)
            );
        }
        println!("   {:<11} batched / one-tx-per-report: {:.1}x", e.engine.title(), e.batched.rps / e.per_report.rps.max(0.001));
    }
    println!("   ('load' = the machine's 1-minute load average at the end of the run, 2 cores: above 2 means other work competed)");
    println!(
        "   (saturated runs keep {} reports queued by construction, so their latency is ~{} / throughput; 'server ack' = mean receive->ack inside the server)",
        knobs.ingest_agents * knobs.window,
        knobs.ingest_agents * knobs.window
    );
    println!();
    println!("Goals");
    let kb = cap.kb_per_agent();
    println!(
        "   {:<66} {:>22}  {}",
        format!("{GOAL_AGENTS} agents connected concurrently"),
        format!("{} reached", cap.reached),
        verdict(cap.reached >= GOAL_AGENTS)
    );
    println!("   {:<66} {:>22}  {}", format!("server memory per agent <= {GOAL_KB_PER_AGENT:.0} KB"), format!("{kb:.1} KB"), verdict(kb <= GOAL_KB_PER_AGENT));
    match engines.iter().find(|e| e.engine == Engine::Postgres) {
        Some(pg) => {
            println!(
                "   {:<66} {:>22}  {}",
                format!("PostgreSQL: >= {GOAL_PG_RPS:.0} reports/s stored (batched, saturated)"),
                format!("{:.0}/s", pg.batched.rps),
                verdict(pg.batched.rps >= GOAL_PG_RPS)
            );
            let delivered = pg.paced.rps >= 0.95 * knobs.paced_rate;
            println!(
                "   {:<66} {:>22}  {}",
                format!("PostgreSQL: p99 ack < {} ms at {:.0} reports/s (paced)", GOAL_P99.as_millis(), knobs.paced_rate),
                format!("{} at {:.0}/s", ms(pg.paced.p99), pg.paced.rps),
                verdict(pg.paced.p99 < GOAL_P99 && delivered)
            );
        }
        None => println!("   {:<66} {:>22}  SKIPPED (set MESHFLEET_TEST_POSTGRES_URL)", "PostgreSQL goals", "not measured"),
    }
    for e in engines {
        let ratio = e.batched.rps / e.per_report.rps.max(0.001);
        println!(
            "   {:<66} {:>22}  {}",
            format!("{}: batched >= {GOAL_RATIO:.0}x one-tx-per-report", e.engine.title()),
            format!("{ratio:.1}x"),
            verdict(ratio >= GOAL_RATIO)
        );
    }
    if knobs.pg_admin.is_none() {
        println!("\nNOTE: PostgreSQL was not measured: set MESHFLEET_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres.");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let knobs = Knobs::from_env();
    let started = Instant::now();
    let cap = capacity(&knobs).await?;
    let mut engines = vec![ingest_engine(Engine::Sqlite, &knobs).await?];
    if knobs.pg_admin.is_some() {
        engines.push(ingest_engine(Engine::Postgres, &knobs).await?);
    }
    print_report(&knobs, &cap, &engines);
    println!("\n(total bench time {:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}
