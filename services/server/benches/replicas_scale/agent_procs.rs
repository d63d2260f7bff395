//! The agents in processes of their own (this binary again, with `AGENTS_ROLE` set), at most a
//! few thousand each: every agent is a socket in its process, and a process may open only so
//! many files. The bench drives them over stdin, one command a line, and reads their state from
//! stdout, one JSON line (`Msg`) every 100 ms and after each command.
//!
//! Commands: first the `Spec` (JSON), then `ramp N` (start the next N agents), `report` (each
//! agent reports every `report_every_ms`), `restart` (a replica is being restarted: note which
//! agents come back and when, counted from now), `restarted` (answer the times), `stop`
//! (reports), `exit` (close every stream and exit; also on end of input).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meshfleet_agent::{v1, AgentHandle, ClientConfig, Identity, Report, Reporter};
use meshfleet_sim::{synthetic_cluster, SharedCluster};
use meshfleet_test_support::process::{terminate, Output};
use serde::{Deserialize, Serialize};

use crate::support::agents::seed;
use crate::support::rss_kb;

/// Set in an agents process (to anything).
pub const AGENTS_ROLE: &str = "MESHFLEET_BENCH_AGENTS_PROC";
const SWEEP: Duration = Duration::from_millis(50);

/// What one agents process runs: agents `first..first + identities.len()` of the fleet, agent i
/// dialling `urls[i % urls.len()]`.
#[derive(Serialize, Deserialize)]
pub struct Spec {
    pub first: usize,
    pub ca_pem: String,
    pub urls: Vec<String>,
    /// `Identity::to_json` of each agent.
    pub identities: Vec<serde_json::Value>,
    pub report_every_ms: u64,
}

#[derive(Serialize, Deserialize, Default, Clone, Debug)]
pub struct Status {
    pub spawned: usize,
    /// Agents whose snapshot was acknowledged at least once.
    pub up: usize,
    pub connected: usize,
    pub reporting: bool,
    pub sent: u64,
    pub unacked: u64,
    pub dropped: u64,
    pub refused: u64,
    /// Since `restart`: agents that lost their stream and have a new one.
    pub back: usize,
    /// Last errors of the agents not up yet.
    pub errors: BTreeMap<String, usize>,
}

/// The answer to `restarted`: each returning agent's time from `restart`, and the last error
/// of each agent that failed meanwhile.
#[derive(Serialize, Deserialize, Default)]
pub struct Returned {
    pub times_ms: Vec<f64>,
    pub errors: BTreeMap<String, usize>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Msg {
    Status(Status),
    Returned(Returned),
}

fn emit(msg: &Msg) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, msg);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

fn short(e: &str) -> String {
    e.chars().take(120).collect()
}

// ---------------------------------------------------------------------------------------------
// In the agents process

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
/// windows consecutive from an hour back; counts them in `sent` until `stop`.
fn drive_reports(reporters: Vec<Reporter>, every: Duration, sent: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    // An hour back: every window is in the past however long the run, and older than none kept.
    let base_ms = (chrono::Utc::now().timestamp_millis() / 60_000 - 60) * 60_000;
    tokio::spawn(async move {
        let n = reporters.len().max(1);
        let tick = Duration::from_millis(100);
        let per_tick = reporters.len() as f64 * tick.as_secs_f64() / every.as_secs_f64();
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

/// A restart being watched: each agent's sessions when it began, when it came back, and its
/// last error while disconnected.
struct Watch {
    signal: Instant,
    sessions: Vec<u64>,
    back: Vec<Option<Duration>>,
    failed: Vec<Option<String>>,
}

/// An agents process's life (see the module's comment).
pub async fn serve_agents() -> anyhow::Result<()> {
    let (tx, mut commands) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let spec: Spec = serde_json::from_str(&commands.recv().await.context("no spec")?).context("the spec")?;
    let identities = spec.identities.iter().map(|v| Identity::from_json(v.to_string().as_bytes())).collect::<Result<Vec<_>, _>>()?;
    let mut handles: Vec<AgentHandle> = Vec::with_capacity(identities.len());
    let (sent, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let mut driver = None;
    let mut watch: Option<Watch> = None;
    let mut interval = tokio::time::interval(SWEEP);
    let mut sweeps = 0u64;
    loop {
        let command = tokio::select! {
            c = commands.recv() => Some(c.unwrap_or_else(|| "exit".into())),
            _ = interval.tick() => None,
        };
        match command.as_deref().map(|c| c.split_once(' ').unwrap_or((c, ""))) {
            None => {}
            Some(("ramp", n)) => {
                let from = handles.len();
                for (j, id) in identities.iter().enumerate().skip(from).take(n.parse().unwrap_or(0)) {
                    let i = spec.first + j;
                    let config = ClientConfig { agent_version: "0.1.0-bench".into(), ..ClientConfig::new(&spec.urls[i % spec.urls.len()], &spec.ca_pem) };
                    handles.push(meshfleet_agent::spawn(config, id.clone(), Arc::new(SharedCluster::new(synthetic_cluster(seed(i))))));
                }
            }
            Some(("report", _)) => {
                stop.store(false, Ordering::Relaxed);
                let every = Duration::from_millis(spec.report_every_ms.max(1));
                driver = Some(drive_reports(handles.iter().map(AgentHandle::reporter).collect(), every, sent.clone(), stop.clone()));
            }
            Some(("stop", _)) => {
                stop.store(true, Ordering::Relaxed);
                if let Some(d) = driver.take() {
                    d.await?;
                }
            }
            Some(("restart", _)) => {
                let n = handles.len();
                let sessions = handles.iter().map(|h| h.stats().sessions).collect();
                watch = Some(Watch { signal: Instant::now(), sessions, back: vec![None; n], failed: vec![None; n] });
            }
            Some(("restarted", _)) => {
                let w = watch.take().unwrap_or(Watch { signal: Instant::now(), sessions: vec![], back: vec![], failed: vec![] });
                let mut returned = Returned { times_ms: w.back.iter().flatten().map(|d| d.as_secs_f64() * 1000.0).collect(), ..Default::default() };
                for e in w.failed.iter().flatten() {
                    *returned.errors.entry(short(e)).or_default() += 1;
                }
                emit(&Msg::Returned(returned));
            }
            Some(("exit", _)) => break,
            Some((other, _)) => bail!("unknown command {other:?}"),
        }
        // Every sweep: who came back; every other one (and after each command): the status.
        let stats: Vec<_> = handles.iter().map(AgentHandle::stats).collect();
        if let Some(w) = &mut watch {
            for (j, s) in stats.iter().enumerate() {
                if !s.connected && s.last_error.is_some() {
                    w.failed[j].clone_from(&s.last_error);
                }
                if w.back[j].is_none() && s.connected && s.sessions > w.sessions[j] {
                    w.back[j] = Some(w.signal.elapsed());
                }
            }
        }
        sweeps += 1;
        if command.is_some() || sweeps % 2 == 0 {
            let mut status = Status {
                spawned: handles.len(),
                reporting: driver.is_some(),
                sent: sent.load(Ordering::Relaxed),
                back: watch.as_ref().map_or(0, |w| w.back.iter().flatten().count()),
                ..Default::default()
            };
            for s in &stats {
                status.up += usize::from(s.last_acked_seq >= 1);
                status.connected += usize::from(s.connected);
                status.unacked += s.buffered as u64;
                status.dropped += s.dropped;
                status.refused += s.refused;
                if let (0, Some(e)) = (s.last_acked_seq, &s.last_error) {
                    *status.errors.entry(short(e)).or_default() += 1;
                }
            }
            emit(&Msg::Status(status));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(handles.into_iter().map(AgentHandle::shutdown))).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// In the bench

/// An agents process as the bench sees it: its latest status; killed when dropped.
pub struct AgentsProc {
    child: Child,
    stdin: ChildStdin,
    output: Output,
    /// Its agents, and how many of them it was told to start.
    pub held: usize,
    pub started: usize,
    pub status: Status,
    returned: Option<Returned>,
}

impl AgentsProc {
    pub fn start(spec: &Spec) -> anyhow::Result<AgentsProc> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(AGENTS_ROLE, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting an agents process")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let output = Output::capture(&mut child);
        let mut p = AgentsProc { child, stdin, output, held: spec.identities.len(), started: 0, status: Status::default(), returned: None };
        p.send(&serde_json::to_string(spec)?)?;
        Ok(p)
    }

    pub fn send(&mut self, command: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{command}").and_then(|()| self.stdin.flush()).with_context(|| format!("agents process: {}", self.output.tail()))
    }

    /// Reads what the process said since the last call; fails if it is gone.
    pub fn poll(&mut self) -> anyhow::Result<()> {
        while let Ok(line) = self.output.stdout.try_recv() {
            match serde_json::from_str(&line) {
                Ok(Msg::Status(s)) => self.status = s,
                Ok(Msg::Returned(r)) => self.returned = Some(r),
                Err(_) => eprintln!("    agents process {}: {line}", self.pid()),
            }
        }
        if let Ok(Some(exit)) = self.child.try_wait() {
            bail!("agents process {} exited ({exit}): {}", self.pid(), self.output.tail());
        }
        Ok(())
    }

    /// Sends `restarted` and waits for the answer.
    pub async fn returned(&mut self) -> anyhow::Result<Returned> {
        self.send("restarted")?;
        let t = Instant::now();
        loop {
            self.poll()?;
            if let Some(r) = self.returned.take() {
                return Ok(r);
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("agents process {}: no answer to restarted", self.pid());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until `done` holds for the latest status (`timeout` at most); whether it did.
    pub async fn wait(procs: &mut [AgentsProc], timeout: Duration, done: impl Fn(&[AgentsProc]) -> bool) -> anyhow::Result<bool> {
        let t = Instant::now();
        loop {
            for p in procs.iter_mut() {
                p.poll()?;
            }
            if done(procs) {
                return Ok(true);
            }
            if t.elapsed() > timeout {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss_kb(&self) -> u64 {
        rss_kb(&self.pid().to_string())
    }

    /// `exit`, then up to 60 s for the streams to close.
    pub async fn exit(mut self) {
        let _ = self.send("exit");
        let t = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && t.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for AgentsProc {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
    }
}

/// Sum of a field over the processes' statuses.
pub fn total<T: std::iter::Sum<T>>(procs: &[AgentsProc], f: impl Fn(&Status) -> T) -> T {
    procs.iter().map(|p| f(&p.status)).sum()
}
