//! Background jobs: every periodic or long-running task of the server, registered here with a
//! name, an interval and a scope (every replica, or one replica at a time under a database
//! lease), stopped together when the server stops, and counted in `/metrics`. A job's work
//! lives in its own module; this one only runs it and must never hold domain rules.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::app::AppState;
use crate::store;

/// Where a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// On every replica: the job keeps this replica's own state (caches, streams) in step.
    EveryReplica,
    /// On one replica at a time, the holder of the job's lease (`job_leases`). When the holder
    /// dies its lease expires after `job_lease_ms` and another replica takes the job over.
    Leased,
}

type RunFn = Arc<dyn Fn(AppState) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// One registered job. A run that returns is run again at the next tick of `every`; a
/// long-running job (a listener) returns only when it fails, and `every` is its restart delay.
/// Runs are dropped at an await point when the server stops or a lease is lost.
#[derive(Clone)]
pub struct Job {
    pub name: &'static str,
    pub every: Duration,
    pub scope: Scope,
    run: RunFn,
    /// Runs it before its next tick when notified (see [`Job::woken_by`]).
    wake: Option<Arc<Notify>>,
}

impl Job {
    pub fn new<F, Fut>(name: &'static str, every: Duration, scope: Scope, run: F) -> Job
    where
        F: Fn(AppState) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        // Each run is a span of its own (a root: a job is no request's child).
        Job {
            name,
            every,
            scope,
            run: Arc::new(move |state| {
                Box::pin(run(state).instrument(tracing::info_span!(target: crate::telemetry::TRACES, parent: None, "job", otel.name = name, job.name = name)))
            }),
            wake: None,
        }
    }

    /// Also runs the job as soon as `wake` is notified (a notification during a run makes
    /// another run follow it), for work that waits on an event this replica sees: the tick
    /// remains for events seen elsewhere.
    pub fn woken_by(self, wake: Arc<Notify>) -> Job {
        Job { wake: Some(wake), ..self }
    }

    /// Waits for the job's next run: its tick, or a wake-up (after which the tick starts over).
    async fn next(&self, tick: &mut tokio::time::Interval) {
        let Some(wake) = &self.wake else {
            tick.tick().await;
            return;
        };
        tokio::select! {
            _ = tick.tick() => {}
            _ = wake.notified() => tick.reset(),
        }
    }
}

/// The jobs this replica runs, by its roles and database.
pub fn registered(state: &AppState) -> Vec<Job> {
    let mut jobs = crate::gateway::dispatch::jobs(state);
    if state.config.roles.gateway {
        jobs.push(crate::gateway::recheck::job());
    }
    if state.config.roles.api {
        jobs.push(crate::fleet::refresh_job());
    }
    if state.config.roles.worker {
        jobs.extend(crate::worker::jobs());
        jobs.push(crate::alerting::rules::job(state));
        jobs.push(crate::alerting::delivery::job());
        jobs.push(crate::certificates::issuer_rotation_job(state));
        jobs.push(crate::certificates::anchor_rotation_job());
        jobs.push(crate::rollouts::job().woken_by(state.ingest.commands_finished.clone()));
        jobs.push(crate::rollouts::proposals::job(state));
    }
    jobs
}

/// The names of the jobs whose tasks have not finished yet.
#[derive(Clone, Default)]
pub struct Running(Arc<Mutex<BTreeSet<&'static str>>>);

impl Running {
    pub fn names(&self) -> Vec<&'static str> {
        self.0.lock().expect("running jobs lock poisoned").iter().copied().collect()
    }
}

/// Removes its job from `Running` however the task ends (returned, cancelled or panicked).
struct Finished(Running, &'static str);

impl Drop for Finished {
    fn drop(&mut self) {
        (self.0).0.lock().expect("running jobs lock poisoned").remove(self.1);
    }
}

/// The started jobs of a server.
pub struct Jobs {
    stop: CancellationToken,
    tasks: JoinSet<()>,
    running: Running,
}

impl Jobs {
    /// Starts one task per job. `holder` names this replica in the lease table.
    pub fn start(state: &AppState, jobs: Vec<Job>) -> Jobs {
        let stop = CancellationToken::new();
        let holder = uuid::Uuid::new_v4().to_string();
        let running = Running::default();
        let mut tasks = JoinSet::new();
        for job in jobs {
            running.0.lock().expect("running jobs lock poisoned").insert(job.name);
            let finished = Finished(running.clone(), job.name);
            let (state, stop, holder) = (state.clone(), stop.clone(), holder.clone());
            tasks.spawn(async move {
                let _finished = finished;
                match job.scope {
                    Scope::EveryReplica => every_replica(&state, &job, &stop).await,
                    Scope::Leased => leased(&state, &job, &stop, &holder).await,
                }
            });
        }
        Jobs { stop, tasks, running }
    }

    pub fn running(&self) -> Running {
        self.running.clone()
    }

    /// Cancels every job and waits until all their tasks have ended.
    pub async fn stop(mut self) {
        self.stop.cancel();
        while let Some(result) = self.tasks.join_next().await {
            if let Err(e) = result {
                if e.is_panic() {
                    tracing::error!(error = %e, "a background job panicked");
                }
            }
        }
    }
}

fn ticker(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

/// One run of `job`, counted and timed (a run cut short by a stop or a lost lease is counted,
/// not timed).
async fn run(state: &AppState, job: &Job) {
    state.metrics.job_runs.with_label_values(&[job.name]).inc();
    let started = Instant::now();
    let result = (job.run)(state.clone()).await;
    state.metrics.job_duration.with_label_values(&[job.name]).observe(started.elapsed().as_secs_f64());
    if let Err(e) = result {
        state.metrics.job_failures.with_label_values(&[job.name]).inc();
        tracing::warn!(job = job.name, error = %format!("{e:#}"), "background job failed");
    }
}

async fn every_replica(state: &AppState, job: &Job, stop: &CancellationToken) {
    let mut tick = ticker(job.every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = job.next(&mut tick) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = run(state, job) => {}
        }
    }
}

/// Runs the job while this replica holds its lease, renewing it every `job_lease_renew_ms`,
/// and releases it on stop. The renewals run beside the job's runs, never in between their
/// awaits: a run holding SQLite's write lock while its lease write waited for that lock would
/// stall both (and every ingest commit) for the whole busy timeout. A run is dropped as soon
/// as the lease is lost.
async fn leased(state: &AppState, job: &Job, stop: &CancellationToken, holder: &str) {
    let lease = Lease { state, job: job.name, holder, ttl: state.config.job_lease };
    let (held_tx, held) = watch::channel(false);
    let keep = async {
        let mut renew = ticker(state.config.job_lease_renew);
        let mut valid_until: Option<Instant> = None;
        loop {
            renew.tick().await;
            valid_until = lease.renew(valid_until).await;
            held_tx.send_replace(valid_until.is_some());
        }
    };
    let work = async {
        let mut tick = ticker(job.every);
        let mut held = held.clone();
        loop {
            let _ = held.wait_for(|h| *h).await;
            job.next(&mut tick).await;
            if !*held.borrow() {
                continue;
            }
            tokio::select! {
                _ = run(state, job) => {}
                _ = held.wait_for(|h| !*h) => {}
            }
        }
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = keep => {}
        _ = work => {}
    }
    if *held.borrow() {
        lease.release().await;
    }
}

struct Lease<'a> {
    state: &'a AppState,
    job: &'static str,
    holder: &'a str,
    ttl: Duration,
}

impl Lease<'_> {
    /// Takes or renews the lease. Returns until when this replica may count on holding it
    /// (None: it does not hold it). A database error keeps a held lease until it would expire.
    async fn renew(&self, valid_until: Option<Instant>) -> Option<Instant> {
        let asked = Instant::now();
        let now = self.state.clock.now_ms();
        let result = match self.state.db.pool.acquire().await {
            Ok(mut conn) => store::leases::take(&mut conn, self.job, self.holder, now, now + crate::config::ms(self.ttl)).await,
            Err(e) => Err(e),
        };
        let next = match result {
            Ok(true) => Some(asked + self.ttl),
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(job = self.job, error = %e, "renewing a job lease failed");
                valid_until.filter(|until| Instant::now() < *until)
            }
        };
        match (valid_until.is_some(), next.is_some()) {
            (false, true) => {
                tracing::info!(job = self.job, holder = self.holder, "job lease acquired");
                self.changed("acquired");
            }
            (true, false) => {
                tracing::warn!(job = self.job, holder = self.holder, "job lease lost");
                self.changed("lost");
            }
            _ => {}
        }
        next
    }

    async fn release(&self) {
        let released = match self.state.db.pool.acquire().await {
            Ok(mut conn) => store::leases::release(&mut conn, self.job, self.holder).await,
            Err(e) => Err(e),
        };
        match released {
            Ok(()) => self.changed("released"),
            // It expires on its own within job_lease_ms.
            Err(e) => tracing::warn!(job = self.job, error = %e, "releasing a job lease failed"),
        }
    }

    fn changed(&self, change: &str) {
        self.state.metrics.job_lease_changes.with_label_values(&[self.job, change]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_woken_job_runs_before_its_tick_which_then_starts_over() {
        let wake = Arc::new(Notify::new());
        let job = Job::new("test", Duration::from_secs(3600), Scope::EveryReplica, |_| async { Ok(()) }).woken_by(wake.clone());
        let mut tick = ticker(job.every);
        job.next(&mut tick).await;
        let soon = Duration::from_secs(1);
        assert!(tokio::time::timeout(soon, job.next(&mut tick)).await.is_err(), "no run before the tick unless woken");
        // Woken while running (no one waiting yet): the next wait returns at once.
        wake.notify_one();
        tokio::time::timeout(soon, job.next(&mut tick)).await.expect("a wake-up runs the job");
        let started = tokio::time::Instant::now();
        job.next(&mut tick).await;
        assert_eq!(started.elapsed(), Duration::from_secs(3600), "the tick starts over after a wake-up");
        let plain = Job::new("test", Duration::from_secs(3600), Scope::EveryReplica, |_| async { Ok(()) });
        let mut tick = ticker(plain.every);
        plain.next(&mut tick).await;
        wake.notify_one();
        assert!(tokio::time::timeout(soon, plain.next(&mut tick)).await.is_err(), "a job with no wake waits for its tick");
    }
}
