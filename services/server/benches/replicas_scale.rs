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
//! MESHFLEET_BENCH_PER_PORT (agents per balancer process, 8000), MESHFLEET_BENCH_PER_PROC
//! (agents per agents process, 9000).
//!
//! Method. The replicas are the real server binary (`ServerBin::replica`, fixed ports so a
//! restarted one comes back where the balancers expect it). A balancer is the tests' TCP
//! balancer (`meshfleet_test_support::balancer`) in a process of its own (this binary again,
//! with `MESHFLEET_BENCH_BALANCER` set), so that its memory and CPU are its own; there is one
//! per MESHFLEET_BENCH_PER_PORT agents, each on its own port of 127.0.0.1, because a balancer
//! holds two sockets per agent (a process may open 20,000 files here) and one client address
//! reaches one destination port through at most ~28,000 ephemeral ports. The agents are real
//! `meshfleet_agent` clients (mTLS stream, snapshot on connect, heartbeat every 10 s, default
//! backoff), each registered with its own key and certificate (`support::agents`), run in
//! processes of their own (`agent_procs`: this binary again, MESHFLEET_BENCH_PER_PROC agents
//! each at most, since each agent is a socket in its process); an agent counts as connected
//! once its snapshot is acknowledged. Each agent sends a Metrics report of one 10-second window with
//! one request every MESHFLEET_BENCH_REPORT_SECS (phases spread evenly), so the database holds
//! an exact count of what was stored: SUM(requests) of the rollups plus the report rows not yet
//! rolled up (one window each), read in one statement. Memory is VmRSS. Everything shares the
//! machine's 2 cores (and other builds), which the printed load average shows.
//!
//! Baseline, same run: one replica without a balancer and MESHFLEET_BENCH_BASELINE_AGENTS
//! agents (by default as many as each of the three replicas holds), same method; its "rolling
//! restart" is the one replica restarted, so its agents wait for it to come back.
//!
//! Without `--bench` (e.g. `cargo test --all-targets`) it runs a seconds-long smoke version; it
//! skips (with a notice) without MESHFLEET_TEST_POSTGRES_URL.

#[path = "replicas_scale/agent_procs.rs"]
mod agent_procs;
mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_procs::{serve_agents, total, AgentsProc, Spec, AGENTS_ROLE};
use anyhow::{bail, Context};
use meshfleet_test_support::app::{postgres_url, Engine, TestDb};
use meshfleet_test_support::balancer::Balancer;
use meshfleet_test_support::process::{clock_ticks_per_sec, cpu_ticks, terminate, Output};
use meshfleet_test_support::server::{FixedReplica, ServerBin};
use support::agents::{raise_nofile, setup_fleet, Fleet};
use support::{loadavg, metric, ms, pct, postgres_ticks, rss_kb, scrape};

/// Set in a balancer's process: its backends, "<addr>,<addr>,...".
const BALANCER_ROLE: &str = "MESHFLEET_BENCH_BALANCER";
const RAMP_TIMEOUT: Duration = Duration::from_secs(120);
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(180);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
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
    per_proc: usize,
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
                per_proc: 5,
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
            per_proc: env_num("MESHFLEET_BENCH_PER_PROC").unwrap_or(9_000usize).max(1),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The processes: replicas and the balancer

/// SIGTERM, then SIGKILL after this long.
const STOP_GRACE: Duration = Duration::from_secs(30);

fn replica_rss_kb(r: &FixedReplica) -> u64 {
    rss_kb(&r.pid().to_string())
}

async fn connected_agents(r: &FixedReplica) -> usize {
    metric(&scrape(&format!("http://127.0.0.1:{}", r.api)).await, "gateway_connected_agents", &[]) as usize
}

/// Starts `r` logging warnings only.
fn start_replica(r: &mut FixedReplica, db: &TestDb, sealing_key: &str) {
    r.start(&ServerBin::at(env!("CARGO_BIN_EXE_meshfleet-server")), db, sealing_key, &[("MESHFLEET_LOG", "warn,meshfleet_server::shutdown=info")]);
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
    procs: usize,
    agents_kb: (u64, u64),
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
    let mut replicas: Vec<FixedReplica> = ["a", "b", "c"].into_iter().take(replica_count).map(FixedReplica::new).collect();
    for r in &mut replicas {
        start_replica(r, &db, &sealing_key);
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
    let procs_kb = |p: &[AgentsProc]| p.iter().map(AgentsProc::rss_kb).sum::<u64>();

    let t = Instant::now();
    let Fleet { ca_pem, identities } =
        setup_fleet(&format!("http://127.0.0.1:{}", replicas[0].api), ([127, 0, 0, 1], replicas[0].gateway).into(), target).await?;
    out.register_secs = t.elapsed().as_secs_f64();
    eprintln!("    {target} clusters created and agents registered in {:.1} s", out.register_secs);
    // The agents processes, `per_proc` agents each at most, in equal shares.
    let share = target.div_ceil(target.div_ceil(knobs.per_proc));
    let mut procs = identities
        .chunks(share)
        .enumerate()
        .map(|(k, ids)| {
            AgentsProc::start(&Spec {
                first: k * share,
                ca_pem: ca_pem.clone(),
                urls: gateway_urls.clone(),
                identities: ids.iter().map(|id| serde_json::from_slice(&id.to_json())).collect::<Result<_, _>>()?,
                report_every_ms: knobs.report_every.as_millis() as u64,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    drop(identities);
    out.procs = procs.len();
    tokio::time::sleep(knobs.settle).await;
    let before: Vec<u64> = replicas.iter().map(replica_rss_kb).collect();
    let balancer_before = balancers_kb(&balancers);
    let procs_before = procs_kb(&procs);

    // Ramps: start `ramp` agents (the processes' in turn), wait for every snapshot to be
    // acknowledged, go on.
    let (t, mut started) = (Instant::now(), 0usize);
    for r in 0..target.div_ceil(knobs.ramp) {
        if mem_available_kb() < MIN_AVAILABLE_KB {
            out.why_stopped = Some(format!("only {} MB of memory left available before ramp {r}", mem_available_kb() / 1024));
            break;
        }
        let (ramp_started, mut left) = (Instant::now(), knobs.ramp);
        for p in &mut procs {
            let n = (p.held - p.started).min(left);
            if n > 0 {
                p.send(&format!("ramp {n}"))?;
                (p.started, left, started) = (p.started + n, left - n, started + n);
            }
        }
        let all_up = AgentsProc::wait(&mut procs, RAMP_TIMEOUT, |p| total(p, |s| s.up) == started).await?;
        out.slowest_ramp_secs = out.slowest_ramp_secs.max(ramp_started.elapsed().as_secs_f64());
        if !all_up {
            let mut errors: BTreeMap<String, usize> = BTreeMap::new();
            for p in &procs {
                for (e, n) in &p.status.errors {
                    *errors.entry(e.clone()).or_default() += n;
                }
            }
            let up = total(&procs, |s| s.up);
            out.why_stopped = Some(format!("ramp {r}: {up}/{started} snapshots acknowledged after {} s; agent errors: {errors:?}", RAMP_TIMEOUT.as_secs()));
        }
        if (r + 1) % 5 == 0 || started == target || out.why_stopped.is_some() {
            let rss: Vec<String> = replicas.iter().map(|r| format!("{} {} MB", r.name, replica_rss_kb(r) / 1024)).collect();
            eprintln!("    {started} agents connected ({:.1} s); RSS {}", t.elapsed().as_secs_f64(), rss.join(", "));
        }
        if out.why_stopped.is_some() {
            break;
        }
    }
    out.connect_secs = t.elapsed().as_secs_f64();
    tokio::time::sleep(knobs.settle).await;
    AgentsProc::wait(&mut procs, Duration::ZERO, |_| true).await?;
    out.reached = total(&procs, |s| s.up);
    for (r, before) in replicas.iter().zip(before) {
        out.replicas.push(ReplicaFigures { name: r.name, rss_before_kb: before, rss_with_kb: replica_rss_kb(r), agents: connected_agents(r).await });
    }
    out.balancer_kb = (!balancers.is_empty()).then(|| (balancer_before, balancers_kb(&balancers)));
    out.agents_kb = (procs_before, procs_kb(&procs));
    out.load.push(loadavg());

    // Reports: a warm-up of one interval (every agent reports once), then the measured window.
    for p in &mut procs {
        p.send("report")?;
    }
    tokio::time::sleep(knobs.report_every).await;
    let pids: Vec<(String, Vec<u32>)> = replicas
        .iter()
        .map(|r| (format!("replica {}", r.name), vec![r.pid()]))
        .chain(balancers.iter().enumerate().map(|(i, b)| (format!("balancer {}", i + 1), vec![b.child.id()])))
        .chain([(format!("agents ({} processes)", procs.len()), procs.iter().map(AgentsProc::pid).collect())])
        .collect();
    let ticks =
        |pids: &[(String, Vec<u32>)]| -> Vec<u64> { pids.iter().map(|(_, p)| p.iter().map(|p| cpu_ticks(*p)).sum()).chain([postgres_ticks()]).collect() };
    AgentsProc::wait(&mut procs, Duration::ZERO, |_| true).await?;
    let (s0, c0, t0, sent0) = (stored(&pool).await?, ticks(&pids), Instant::now(), total(&procs, |s| s.sent));
    tokio::time::sleep(knobs.window).await;
    AgentsProc::wait(&mut procs, Duration::ZERO, |_| true).await?;
    let (s1, c1) = (stored(&pool).await?, ticks(&pids));
    out.window_secs = t0.elapsed().as_secs_f64();
    out.sent_in_window = total(&procs, |s| s.sent) - sent0;
    out.stored_in_window = s1 - s0;
    let hz = clock_ticks_per_sec();
    let names = pids.iter().map(|(n, _)| n.clone()).chain(["PostgreSQL".to_owned()]);
    out.cpu = names.zip(c0.iter().zip(&c1)).map(|(n, (a, b))| (n, b.saturating_sub(*a) as f64 / hz / out.window_secs * 100.0)).collect();
    out.load.push(loadavg());
    eprintln!("    {} reports sent, {} stored in {:.1} s", out.sent_in_window, out.stored_in_window, out.window_secs);

    // Rolling restart: each replica in turn SIGTERMed and started again at once, reports going on.
    for replica in &mut replicas {
        out.restarts.push(restart(replica, &db, &sealing_key, &mut procs).await?);
        let last = out.restarts.last().unwrap();
        eprintln!("    replica {}: {}/{} agents back, max {:?}", last.name, last.times.len(), last.held, last.times.last());
        tokio::time::sleep(knobs.settle).await;
    }
    out.load.push(loadavg());

    // Nothing acknowledged lost: every report sent is acknowledged, then stored exactly once.
    for p in &mut procs {
        p.send("stop")?;
    }
    AgentsProc::wait(&mut procs, SETTLE_TIMEOUT, |p| p.iter().all(|p| !p.status.reporting) && total(p, |s| s.unacked) == 0).await?;
    (out.sent, out.unacked) = (total(&procs, |s| s.sent), total(&procs, |s| s.unacked));
    (out.dropped, out.refused) = (total(&procs, |s| s.dropped), total(&procs, |s| s.refused));
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while pending_rows(&pool).await != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    out.stored_final = stored(&pool).await?;
    eprintln!("    {} reports sent, {} unacknowledged, {} stored", out.sent, out.unacked, out.stored_final);
    futures::future::join_all(procs.into_iter().map(AgentsProc::exit)).await;
    drop(balancers);
    for r in &mut replicas {
        r.stop(Some(STOP_GRACE));
    }
    pool.close().await;
    Ok(out)
}

/// SIGTERM to one replica, started again at once on its ports; for each agent that lost its
/// stream, the time from the signal to its next one (each agents process sweeps its agents
/// every 50 ms), until as many came back as the replica held and all are connected.
async fn restart(replica: &mut FixedReplica, db: &TestDb, sealing_key: &str, procs: &mut [AgentsProc]) -> anyhow::Result<Restart> {
    let held = connected_agents(replica).await;
    for p in procs.iter_mut() {
        p.send("restart")?;
    }
    let signal = Instant::now();
    let stop_took = replica.stop(Some(STOP_GRACE));
    start_replica(replica, db, sealing_key);
    let down_for = signal.elapsed();
    let timeout = RECONNECT_TIMEOUT.saturating_sub(signal.elapsed());
    let all_back = AgentsProc::wait(procs, timeout, |p| total(p, |s| s.back) >= held && p.iter().all(|p| p.status.connected == p.status.spawned)).await?;
    let (mut times, mut errors) = (Vec::new(), BTreeMap::new());
    for p in procs.iter_mut() {
        let r = p.returned().await?;
        times.extend(r.times_ms.into_iter().map(|ms| Duration::from_secs_f64(ms / 1000.0)));
        for (e, n) in r.errors {
            *errors.entry(e).or_default() += n;
        }
    }
    times.sort();
    Ok(Restart { name: replica.name, held, stop_took, down_for, times, all_back, errors })
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
            "   agents' RSS ({} processes): {} -> {} ({:.1} KB per agent)",
            o.procs,
            mb(o.agents_kb.0),
            mb(o.agents_kb.1),
            (o.agents_kb.1 as f64 - o.agents_kb.0 as f64) / o.reached.max(1) as f64
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
    if std::env::var(AGENTS_ROLE).is_ok() {
        return serve_agents().await;
    }
    let mut knobs = Knobs::from_env();
    if postgres_url().is_none() {
        println!("replicas_scale: SKIPPED (PostgreSQL only): set MESHFLEET_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres");
        return Ok(());
    }
    let started = Instant::now();
    // Each agent is a socket in its agents process and in a replica, and two in a balancer
    // (hence several of each); 1,024 kept for the rest of a process.
    let nofile = raise_nofile(knobs.agents as u64 + 4096);
    let room = (nofile.0 as usize).saturating_sub(1024).max(1);
    knobs.per_port = knobs.per_port.min(room / 2);
    knobs.per_proc = knobs.per_proc.min(room);
    let mut runs = vec![measure("baseline: one replica, no balancer", 1, knobs.baseline_agents, &knobs).await?];
    let scaled = measure("three replicas behind the balancer", 3, knobs.agents, &knobs).await?;
    runs.push(scaled);
    print_report(&knobs, nofile, &runs);
    println!("\n(total bench time {:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}
