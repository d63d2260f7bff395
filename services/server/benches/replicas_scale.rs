//! Three replicas at scale (issue 16): N simulated agents (default 30,000) across three
//! `meshfleet-server` processes on one PostgreSQL database behind a TCP balancer; what each
//! connected agent costs in server memory, how many reports a second are stored, and how long
//! agents take to come back when the replicas are restarted one at a time (SIGTERM), with no
//! acknowledged report lost. PostgreSQL only.
//!
//! Run:   MESHFLEET_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!        cargo bench -p meshfleet-server --bench replicas_scale
//! Knobs: MESHFLEET_BENCH_AGENTS (30000), MESHFLEET_BENCH_BASELINE_AGENTS (agents / 3),
//! MESHFLEET_BENCH_RAMP (agents started per ramp, 1000), MESHFLEET_BENCH_REPORT_SECS (each
//! agent's report interval, 30), MESHFLEET_BENCH_SECS (measured window, 60),
//! MESHFLEET_BENCH_PER_PORT (agents per balancer process, 8000).
//!
//! Method. The replicas are the real server binary (`ServerBin::replica`, fixed ports so a
//! restarted one comes back where the balancers expect it). A balancer is the tests' TCP
//! balancer (`meshfleet_test_support::balancer`) in a process of its own (this binary again,
//! with `MESHFLEET_BENCH_BALANCER` set), so that its memory and CPU are its own; there is one
//! per MESHFLEET_BENCH_PER_PORT agents, each on its own port of 127.0.0.1, because a balancer
//! holds two sockets per agent (a process may open 20,000 files here) and one client address
//! reaches one destination port through at most ~28,000 ephemeral ports. The agents are real `meshfleet_agent` clients (mTLS stream,
//! snapshot on connect, heartbeat every 10 s, default backoff), each registered with its own key
//! and certificate (`support::agents`), all in this process; an agent counts as connected once
//! its snapshot is acknowledged. Each agent sends a Metrics report of one 10-second window with
//! one request every MESHFLEET_BENCH_REPORT_SECS (phases spread evenly), so the database holds
//! an exact count of what was stored: SUM(requests) of the rollups plus the report rows not yet
//! rolled up (one window each), read in one statement. Memory is VmRSS. Everything shares the
//! machine's 2 cores (and other builds), which the printed load average shows.
//!
//! N is capped at what this process's open-files limit holds (one socket per agent, 2,048
//! kept for the rest), and the run says so: here 17,952 of 30,000 (hard limit 20,000).
//!
//! Baseline, same run: one replica without a balancer and MESHFLEET_BENCH_BASELINE_AGENTS
//! agents (by default as many as each of the three replicas holds), same method; its "rolling
//! restart" is the one replica restarted, so its agents wait for it to come back.
//!
//! Without `--bench` (e.g. `cargo test --all-targets`) it runs a seconds-long smoke version; it
//! skips (with a notice) without MESHFLEET_TEST_POSTGRES_URL.

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meshfleet_agent::{v1, AgentHandle, ClientConfig, Report, Reporter};
use meshfleet_sim::{synthetic_cluster, SharedCluster};
use meshfleet_test_support::app::{postgres_url, Engine, TestDb};
use meshfleet_test_support::balancer::Balancer;
use meshfleet_test_support::process::{clock_ticks_per_sec, cpu_ticks, free_port, terminate, Output};
use meshfleet_test_support::server::{ServerBin, ServerProcess};
use support::agents::{raise_nofile, seed, setup_fleet, Fleet};
use support::{loadavg, metric, ms, pct, postgres_ticks, rss_kb, scrape};

/// Set in a balancer's process: its backends, "<addr>,<addr>,...".
const BALANCER_ROLE: &str = "MESHFLEET_BENCH_BALANCER";
const RAMP_TIMEOUT: Duration = Duration::from_secs(120);
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(180);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
const SWEEP: Duration = Duration::from_millis(50);
/// Below this much available memory no further ramp is started.
const MIN_AVAILABLE_KB: u64 = 1024 * 1024;

struct Knobs {
    smoke: bool,
    agents: usize,
    baseline_agents: usize,
    ramp: usize,
    report_every: Duration,
    window: Duration,
    settle: Duration,
    per_port: usize,
}

impl Knobs {
    fn from_env() -> Knobs {
        use support::env_num;
        // `cargo bench` passes --bench; anything else (cargo test --all-targets) gets a smoke run.
        if !std::env::args().any(|a| a == "--bench") {
            let millis = Duration::from_millis;
            return Knobs {
                smoke: true,
                agents: 12,
                baseline_agents: 4,
                ramp: 6,
                report_every: millis(500),
                window: millis(2000),
                settle: millis(500),
                per_port: 5,
            };
        }
        let agents = env_num("MESHFLEET_BENCH_AGENTS").unwrap_or(30_000usize).max(3);
        Knobs {
            smoke: false,
            agents,
            baseline_agents: env_num("MESHFLEET_BENCH_BASELINE_AGENTS").unwrap_or(agents / 3).max(1),
            ramp: env_num("MESHFLEET_BENCH_RAMP").unwrap_or(1000usize).max(1),
            report_every: Duration::from_secs_f64(env_num("MESHFLEET_BENCH_REPORT_SECS").unwrap_or(30.0f64).max(0.1)),
            window: Duration::from_secs_f64(env_num("MESHFLEET_BENCH_SECS").unwrap_or(60.0f64).max(1.0)),
            settle: Duration::from_secs(10),
            per_port: env_num("MESHFLEET_BENCH_PER_PORT").unwrap_or(8_000usize).clamp(1, 28_000),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The processes: replicas and the balancer

/// One replica on fixed ports (the balancer's backends), and its process while it runs.
struct Replica {
    name: &'static str,
    api: u16,
    gateway: u16,
    process: Option<ServerProcess>,
}

impl Replica {
    fn start(&mut self, db: &TestDb, sealing_key: &str) {
        let (listen, gateway) = (format!("127.0.0.1:{}", self.api), format!("127.0.0.1:{}", self.gateway));
        let env = [("MESHFLEET_LISTEN", listen.as_str()), ("MESHFLEET_GATEWAY_LISTEN", gateway.as_str()), ("MESHFLEET_LOG", "warn")];
        let bin = ServerBin::at(env!("CARGO_BIN_EXE_meshfleet-server"));
        // Waiting for its announcement blocks; the agents run on meanwhile.
        self.process = Some(tokio::task::block_in_place(|| bin.replica(db, sealing_key, self.name, &env)));
    }

    /// SIGTERM, SIGKILL after 30 s; how long it took to exit.
    fn stop(&mut self) -> Duration {
        let t = Instant::now();
        if let Some(mut p) = self.process.take() {
            tokio::task::block_in_place(|| p.terminate(Duration::from_secs(30)));
        }
        t.elapsed()
    }

    fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, |p| p.child.id())
    }

    fn rss_kb(&self) -> u64 {
        rss_kb(&self.pid().to_string())
    }

    async fn connected_agents(&self) -> usize {
        metric(&scrape(&format!("http://127.0.0.1:{}", self.api)).await, "gateway_connected_agents", &[]) as usize
    }
}

/// A balancer in its own process, listening on 127.0.0.1:`port`; stopped when dropped.
struct BalancerProc {
    child: Child,
    port: u16,
}

impl BalancerProc {
    fn start(backends: &[u16]) -> anyhow::Result<BalancerProc> {
        let backends: Vec<String> = backends.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut child = Command::new(std::env::current_exe()?)
            .env(BALANCER_ROLE, backends.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the balancer process")?;
        let output = Output::capture(&mut child);
        let line = output.stdout.recv_timeout(Duration::from_secs(30)).with_context(|| format!("the balancer did not start: {}", output.tail()))?;
        let Some(port) = line.strip_prefix("balancing on ").and_then(|p| p.trim().parse().ok()) else {
            bail!("the balancer announced {line:?}");
        };
        Ok(BalancerProc { child, port })
    }

    fn rss_kb(&self) -> u64 {
        rss_kb(&self.child.id().to_string())
    }
}

impl Drop for BalancerProc {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
    }
}

/// A balancer process's life: balancing over the backends until the bench closes its stdin.
async fn serve_balancer(spec: &str) -> anyhow::Result<()> {
    let backends: Vec<SocketAddr> = spec.split(',').map(str::parse).collect::<Result<_, _>>()?;
    let balancer = Balancer::start(backends).await;
    println!("balancing on {}", balancer.addr.port());
    tokio::task::spawn_blocking(|| {
        let mut buf = [0u8; 64];
        while std::io::stdin().read(&mut buf).is_ok_and(|n| n > 0) {}
    })
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The agents

/// One Metrics report: a 10-second window with one request, so stored reports can be counted.
fn one_request(window_start_ms: i64) -> Report {
    Report::Metrics(v1::Metrics {
        window_start_unix_ms: window_start_ms,
        window_end_unix_ms: window_start_ms + 10_000,
        workloads: vec![v1::WorkloadMetrics {
            namespace: "bench".into(),
            workload: "Deployment/bench".into(),
            requests: 1,
            latency_p99_ms: 5.0,
            ..Default::default()
        }],
    })
}

/// Reports from every agent once per `every`, spread evenly (a tick every 100 ms), each agent's
/// windows consecutive from `base_ms`; counts them in `sent` until `stop`.
fn drive_reports(reporters: Arc<Vec<Reporter>>, every: Duration, sent: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    // An hour back: every window is in the past however long the run, and older than none kept.
    let base_ms = (chrono::Utc::now().timestamp_millis() / 60_000 - 60) * 60_000;
    tokio::spawn(async move {
        let n = reporters.len();
        let tick = Duration::from_millis(100);
        let per_tick = n as f64 * tick.as_secs_f64() / every.as_secs_f64();
        let mut windows = vec![0i64; n];
        let (mut due, mut next) = (0.0f64, 0usize);
        let mut interval = tokio::time::interval(tick);
        while !stop.load(Ordering::Relaxed) {
            interval.tick().await;
            due += per_tick;
            while due >= 1.0 {
                let j = next % n;
                reporters[j].report(one_request(base_ms + windows[j] * 10_000));
                windows[j] += 1;
                sent.fetch_add(1, Ordering::Relaxed);
                next += 1;
                due -= 1.0;
            }
        }
    })
}

/// Reports stored in the database: the rollups' requests plus the rows not yet rolled up (one
/// window of one request each), in one statement so a rollup pass in between is seen whole.
async fn stored(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    let sql = "SELECT (SELECT COALESCE(SUM(requests), 0) FROM metric_rollups)::BIGINT + (SELECT COUNT(*) FROM metric_reports)::BIGINT";
    Ok(sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await?)
}

async fn pending_rows(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM metric_reports").fetch_one(pool).await.unwrap_or(-1)
}

fn mem_available_kb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("MemAvailable:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------------
// One setup measured: connect, memory, reports stored, rolling restart, nothing lost

struct ReplicaFigures {
    name: &'static str,
    rss_before_kb: u64,
    rss_with_kb: u64,
    agents: usize,
}

struct Restart {
    name: &'static str,
    held: usize,
    stop_took: Duration,
    down_for: Duration,
    times: Vec<Duration>,
    all_back: bool,
    /// Why the agents' attempts failed meanwhile (each agent's last error while disconnected).
    errors: BTreeMap<String, usize>,
}

#[derive(Default)]
struct Outcome {
    label: String,
    target: usize,
    reached: usize,
    why_stopped: Option<String>,
    register_secs: f64,
    connect_secs: f64,
    slowest_ramp_secs: f64,
    replicas: Vec<ReplicaFigures>,
    balancer_kb: Option<(u64, u64)>,
    bench_kb: (u64, u64),
    window_secs: f64,
    sent_in_window: u64,
    stored_in_window: i64,
    cpu: Vec<(String, f64)>,
    restarts: Vec<Restart>,
    sent: u64,
    unacked: u64,
    stored_final: i64,
    dropped: u64,
    refused: u64,
    load: Vec<f64>,
}

impl Outcome {
    fn kb_per_agent(&self) -> f64 {
        let grown: f64 = self.replicas.iter().map(|r| r.rss_with_kb as f64 - r.rss_before_kb as f64).sum();
        grown / self.replicas.iter().map(|r| r.agents).sum::<usize>().max(1) as f64
    }
}

async fn measure(label: &str, replica_count: usize, target: usize, knobs: &Knobs) -> anyhow::Result<Outcome> {
    let mut out = Outcome { label: label.to_owned(), target, ..Default::default() };
    out.load.push(loadavg());
    eprintln!("== {label}: {target} agents, {replica_count} replica(s)");
    let db = TestDb::new(Engine::Postgres).await;
    let pool = sqlx::PgPool::connect(&db.url).await.context("the bench's connection to the database")?;
    let sealing_key = meshfleet_server::secrets::Sealer::generate_key();
    let mut replicas: Vec<Replica> =
        ["a", "b", "c"].into_iter().take(replica_count).map(|name| Replica { name, api: free_port(), gateway: free_port(), process: None }).collect();
    for r in &mut replicas {
        r.start(&db, &sealing_key);
    }
    // Balancers of `per_port` agents each (ephemeral ports and open files bound one), or none.
    let gateways: Vec<u16> = replicas.iter().map(|r| r.gateway).collect();
    let balancers = if replica_count > 1 {
        (0..target.div_ceil(knobs.per_port)).map(|_| BalancerProc::start(&gateways)).collect::<anyhow::Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    // Agents dial the balancers in turn, or the one replica directly.
    let gateway_urls: Vec<String> = match balancers.is_empty() {
        false => balancers.iter().map(|b| format!("https://127.0.0.1:{}", b.port)).collect(),
        true => vec![format!("https://127.0.0.1:{}", replicas[0].gateway)],
    };
    let balancers_kb = |b: &[BalancerProc]| b.iter().map(BalancerProc::rss_kb).sum::<u64>();

    let t = Instant::now();
    let Fleet { ca_pem, identities } =
        setup_fleet(&format!("http://127.0.0.1:{}", replicas[0].api), ([127, 0, 0, 1], replicas[0].gateway).into(), target).await?;
    out.register_secs = t.elapsed().as_secs_f64();
    eprintln!("    {target} clusters created and agents registered in {:.1} s", out.register_secs);
    tokio::time::sleep(knobs.settle).await;
    let before: Vec<u64> = replicas.iter().map(Replica::rss_kb).collect();
    let balancer_before = balancers_kb(&balancers);
    let bench_before = rss_kb("self");

    // Ramps: start `ramp` agents, wait for every snapshot to be acknowledged, go on.
    let mut handles: Vec<AgentHandle> = Vec::with_capacity(target);
    let t = Instant::now();
    for (r, ramp) in identities.chunks(knobs.ramp).enumerate() {
        if mem_available_kb() < MIN_AVAILABLE_KB {
            out.why_stopped = Some(format!("only {} MB of memory left available before ramp {r}", mem_available_kb() / 1024));
            break;
        }
        let (first, ramp_started) = (handles.len(), Instant::now());
        for (j, id) in ramp.iter().enumerate() {
            let i = first + j;
            let config = ClientConfig { agent_version: "0.1.0-bench".into(), ..ClientConfig::new(&gateway_urls[i % gateway_urls.len()], &ca_pem) };
            handles.push(meshfleet_agent::spawn(config, id.clone(), Arc::new(SharedCluster::new(synthetic_cluster(seed(i))))));
        }
        loop {
            let up = handles.iter().filter(|h| h.stats().last_acked_seq >= 1).count();
            if up == handles.len() {
                break;
            }
            if ramp_started.elapsed() > RAMP_TIMEOUT {
                let mut errors: BTreeMap<String, usize> = BTreeMap::new();
                for h in &handles[first..] {
                    if let Some(e) = h.stats().last_error {
                        *errors.entry(e).or_default() += 1;
                    }
                }
                out.why_stopped =
                    Some(format!("ramp {r}: {up}/{} snapshots acknowledged after {} s; agent errors: {errors:?}", handles.len(), RAMP_TIMEOUT.as_secs()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        out.slowest_ramp_secs = out.slowest_ramp_secs.max(ramp_started.elapsed().as_secs_f64());
        if (r + 1) % 5 == 0 || handles.len() == target || out.why_stopped.is_some() {
            let rss: Vec<String> = replicas.iter().map(|r| format!("{} {} MB", r.name, r.rss_kb() / 1024)).collect();
            eprintln!("    {} agents connected ({:.1} s); RSS {}", handles.len(), t.elapsed().as_secs_f64(), rss.join(", "));
        }
        if out.why_stopped.is_some() {
            break;
        }
    }
    out.connect_secs = t.elapsed().as_secs_f64();
    out.reached = handles.iter().filter(|h| h.stats().last_acked_seq >= 1).count();
    tokio::time::sleep(knobs.settle).await;
    for (r, before) in replicas.iter().zip(before) {
        out.replicas.push(ReplicaFigures { name: r.name, rss_before_kb: before, rss_with_kb: r.rss_kb(), agents: r.connected_agents().await });
    }
    out.balancer_kb = (!balancers.is_empty()).then(|| (balancer_before, balancers_kb(&balancers)));
    out.bench_kb = (bench_before, rss_kb("self"));
    out.load.push(loadavg());

    // Reports: a warm-up of one interval (every agent reports once), then the measured window.
    let reporters: Arc<Vec<Reporter>> = Arc::new(handles.iter().map(AgentHandle::reporter).collect());
    let (sent, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let driver = drive_reports(reporters.clone(), knobs.report_every, sent.clone(), stop.clone());
    tokio::time::sleep(knobs.report_every).await;
    let pids: Vec<(String, u32)> = replicas
        .iter()
        .map(|r| (format!("replica {}", r.name), r.pid()))
        .chain(balancers.iter().enumerate().map(|(i, b)| (format!("balancer {}", i + 1), b.child.id())))
        .chain([("bench (agents)".to_owned(), std::process::id())])
        .collect();
    let ticks = |pids: &[(String, u32)]| -> Vec<u64> { pids.iter().map(|(_, pid)| cpu_ticks(*pid)).chain([postgres_ticks()]).collect() };
    let (s0, c0, t0) = (stored(&pool).await?, ticks(&pids), Instant::now());
    let sent0 = sent.load(Ordering::Relaxed);
    tokio::time::sleep(knobs.window).await;
    let (s1, c1) = (stored(&pool).await?, ticks(&pids));
    out.window_secs = t0.elapsed().as_secs_f64();
    out.sent_in_window = sent.load(Ordering::Relaxed) - sent0;
    out.stored_in_window = s1 - s0;
    let hz = clock_ticks_per_sec();
    let names = pids.iter().map(|(n, _)| n.clone()).chain(["PostgreSQL".to_owned()]);
    out.cpu = names.zip(c0.iter().zip(&c1)).map(|(n, (a, b))| (n, b.saturating_sub(*a) as f64 / hz / out.window_secs * 100.0)).collect();
    out.load.push(loadavg());
    eprintln!("    {} reports sent, {} stored in {:.1} s", out.sent_in_window, out.stored_in_window, out.window_secs);

    // Rolling restart: each replica in turn SIGTERMed and started again at once, reports going on.
    for replica in &mut replicas {
        out.restarts.push(restart(replica, &db, &sealing_key, &reporters).await);
        let last = out.restarts.last().unwrap();
        eprintln!("    replica {}: {}/{} agents back, max {:?}", last.name, last.times.len(), last.held, last.times.last());
        tokio::time::sleep(knobs.settle).await;
    }
    out.load.push(loadavg());

    // Nothing acknowledged lost: every report sent is acknowledged, then stored exactly once.
    stop.store(true, Ordering::Relaxed);
    driver.await?;
    out.sent = sent.load(Ordering::Relaxed);
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let stats: Vec<_> = reporters.iter().map(Reporter::stats).collect();
        out.unacked = stats.iter().map(|s| s.buffered as u64).sum();
        out.dropped = stats.iter().map(|s| s.dropped).sum();
        out.refused = stats.iter().map(|s| s.refused).sum();
        if out.unacked == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while pending_rows(&pool).await != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    out.stored_final = stored(&pool).await?;
    eprintln!("    {} reports sent, {} unacknowledged, {} stored", out.sent, out.unacked, out.stored_final);
    let _ = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(handles.into_iter().map(AgentHandle::shutdown))).await;
    drop(balancers);
    for r in &mut replicas {
        r.stop();
    }
    pool.close().await;
    Ok(out)
}

/// SIGTERM to one replica, started again at once on its ports; for each agent that lost its
/// stream, the time from the signal to its next one, sampled every `SWEEP`.
async fn restart(replica: &mut Replica, db: &TestDb, sealing_key: &str, reporters: &Arc<Vec<Reporter>>) -> Restart {
    let held = replica.connected_agents().await;
    let sessions: Vec<u64> = reporters.iter().map(|r| r.stats().sessions).collect();
    let signal = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (reporters, done) = (reporters.clone(), done.clone());
        tokio::spawn(async move {
            let mut back: Vec<Option<Duration>> = vec![None; reporters.len()];
            let mut failed: Vec<Option<String>> = vec![None; reporters.len()];
            let mut count = 0;
            loop {
                let mut all_connected = true;
                for (j, r) in reporters.iter().enumerate() {
                    let s = r.stats();
                    all_connected &= s.connected;
                    if !s.connected && s.last_error.is_some() {
                        failed[j] = s.last_error;
                    }
                    if back[j].is_none() && s.connected && s.sessions > sessions[j] {
                        back[j] = Some(signal.elapsed());
                        count += 1;
                    }
                }
                let finished = done.load(Ordering::Relaxed) && count >= held && all_connected;
                if finished || signal.elapsed() > RECONNECT_TIMEOUT {
                    let mut times: Vec<Duration> = back.into_iter().flatten().collect();
                    times.sort();
                    let mut errors = BTreeMap::new();
                    for e in failed.into_iter().flatten() {
                        *errors.entry(e.chars().take(120).collect()).or_default() += 1;
                    }
                    return (times, finished, errors);
                }
                tokio::time::sleep(SWEEP).await;
            }
        })
    };
    let stop_took = replica.stop();
    replica.start(db, sealing_key);
    let down_for = signal.elapsed();
    done.store(true, Ordering::Relaxed);
    let (times, all_back, errors) = watcher.await.unwrap_or_default();
    Restart { name: replica.name, held, stop_took, down_for, times, all_back, errors }
}

// ---------------------------------------------------------------------------------------------
// The report

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

fn print_report(knobs: &Knobs, nofile: (u64, u64), runs: &[Outcome]) {
    println!("\n== replicas_scale: agents across replicas behind a TCP balancer, PostgreSQL");
    println!(
        "   each agent reports every {:.1} s (one window, one request) and heartbeats every 10 s; measured window {:.0} s; open files {} (hard {}){}",
        knobs.report_every.as_secs_f64(),
        knobs.window.as_secs_f64(),
        nofile.0,
        nofile.1,
        if knobs.smoke { "; SMOKE run (figures meaningless)" } else { "" }
    );
    for o in runs {
        println!("\n-- {} (load average {})", o.label, o.load.iter().map(|l| format!("{l:.1}")).collect::<Vec<_>>().join(" -> "));
        println!(
            "   agents connected: {} of {} (registered in {:.0} s, connected in {:.1} s, slowest ramp {:.1} s)",
            o.reached, o.target, o.register_secs, o.connect_secs, o.slowest_ramp_secs
        );
        if let Some(why) = &o.why_stopped {
            println!("   STOPPED: {why}");
        }
        for r in &o.replicas {
            let per = (r.rss_with_kb as f64 - r.rss_before_kb as f64) / r.agents.max(1) as f64;
            println!("   replica {}: RSS {} -> {} with {} agents: {per:.1} KB per agent", r.name, mb(r.rss_before_kb), mb(r.rss_with_kb), r.agents);
        }
        println!("   server memory per connected agent, all replicas: {:.1} KB", o.kb_per_agent());
        if let Some((a, b)) = o.balancer_kb {
            println!("   balancers' RSS, all together: {} -> {} ({:.1} KB per agent)", mb(a), mb(b), (b as f64 - a as f64) / o.reached.max(1) as f64);
        }
        println!(
            "   bench process (agents) RSS {} -> {} ({:.1} KB per agent)",
            mb(o.bench_kb.0),
            mb(o.bench_kb.1),
            (o.bench_kb.1 as f64 - o.bench_kb.0 as f64) / o.reached.max(1) as f64
        );
        println!(
            "   reports: {:.0}/s sent, {:.0}/s stored over {:.1} s ({} sent, {} stored)",
            o.sent_in_window as f64 / o.window_secs,
            o.stored_in_window as f64 / o.window_secs,
            o.window_secs,
            o.sent_in_window,
            o.stored_in_window
        );
        println!("   CPU over the window (% of one core): {}", o.cpu.iter().map(|(n, c)| format!("{n} {c:.0}%")).collect::<Vec<_>>().join(", "));
        for r in &o.restarts {
            let t = &r.times;
            println!(
                "   restart {} (SIGTERM, exited in {} ms, serving again after {} ms): {}/{} agents reconnected{}; p50 {} ms, p99 {} ms, max {} ms",
                r.name,
                ms(r.stop_took),
                ms(r.down_for),
                t.len(),
                r.held,
                if r.all_back { "" } else { " (NOT all within the timeout)" },
                ms(pct(t, 50.0)),
                ms(pct(t, 99.0)),
                ms(t.last().copied().unwrap_or_default())
            );
            let mut errors: Vec<_> = r.errors.iter().collect();
            errors.sort_by(|a, b| b.1.cmp(a.1));
            for (e, n) in errors.iter().take(4) {
                println!("      {n} agents last failed with: {e}");
            }
        }
        let lost = (o.sent - o.unacked) as i64 - o.stored_final;
        println!(
            "   after the restarts: {} reports sent, {} acknowledged, {} stored: {} ({} dropped by agents, {} refused)",
            o.sent,
            o.sent - o.unacked,
            o.stored_final,
            if lost <= 0 && o.stored_final <= o.sent as i64 { "nothing acknowledged lost, nothing stored twice".to_owned() } else { format!("{lost} LOST") },
            o.dropped,
            o.refused
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Ok(spec) = std::env::var(BALANCER_ROLE) {
        return serve_balancer(&spec).await;
    }
    let mut knobs = Knobs::from_env();
    if postgres_url().is_none() {
        println!("replicas_scale: SKIPPED (PostgreSQL only): set MESHFLEET_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres");
        return Ok(());
    }
    let started = Instant::now();
    // Each agent is a socket in this process and in a replica, and two in a balancer (hence
    // several balancers); all its agents' sockets in this one process bound N.
    let nofile = raise_nofile(knobs.agents as u64 + 4096);
    let fit = (nofile.0 as usize).saturating_sub(2048);
    knobs.per_port = knobs.per_port.min((nofile.0 as usize).saturating_sub(1024) / 2);
    if knobs.agents > fit && std::env::var("MESHFLEET_BENCH_BASELINE_AGENTS").is_err() {
        knobs.baseline_agents = fit / 3;
    }
    let mut runs = vec![measure("baseline: one replica, no balancer", 1, knobs.baseline_agents.min(fit), &knobs).await?];
    let mut scaled = measure("three replicas behind the balancer", 3, knobs.agents.min(fit), &knobs).await?;
    if knobs.agents > fit {
        scaled.why_stopped.get_or_insert(format!(
            "{} agents asked for; this process holds every agent's socket and may open {} files (hard limit {}, not raisable here): {fit} fit",
            knobs.agents, nofile.0, nofile.1
        ));
    }
    runs.push(scaled);
    print_report(&knobs, nofile, &runs);
    println!("\n(total bench time {:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}
