//! The write path for agent reports. Reports go to a writer task per shard (a cluster always
//! maps to the same shard, so its reports apply in order); each writer takes everything
//! queued, up to `batch_max`, and stores it in one transaction. A report is acknowledged to
//! the agent only after its transaction commits. Metrics are stored as one raw row per report
//! (`store::metric_reports`), rolled up per minute off this path; when an agent was last
//! heard from is written apart too, at most once a second per cluster (`Ingest::seen`), and so
//! are the refusals of over-quota reports (`Ingest::refused`), which become cluster findings.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::TraceContextExt;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::db::{Clock, Db};
use crate::domain::{ClusterId, CommandId, OrgId};
use crate::metrics::Metrics;
use crate::store;
use crate::store::agents::Seen;
use crate::store::inventory::{Facts, Pod};
use crate::store::metric_series::{Admitted, Known};
use crate::store::rollups::{Event, Window};
use crate::store::throttles::Noted;

#[derive(Debug, Clone)]
pub enum Report {
    Snapshot { facts: Facts, pods: Vec<Pod> },
    Delta { upserted: Vec<Pod>, removed: Vec<(String, String)>, facts: Option<Facts> },
    Metrics(Vec<Window>),
    Events(Vec<Event>),
    CommandResult { id: CommandId, state: &'static str, progress: i64, message: String, output: Option<serde_json::Value> },
}

impl Report {
    pub fn kind(&self) -> &'static str {
        match self {
            Report::Snapshot { .. } => "snapshot",
            Report::Delta { .. } => "delta",
            Report::Metrics(_) => "metrics",
            Report::Events(_) => "events",
            Report::CommandResult { .. } => "command_result",
        }
    }
}

/// Part of a report refused for a quota; the rest (if any) was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Short and stable, as in metrics and findings: `series`, `events_per_minute`, `bytes`.
    pub reason: &'static str,
    pub message: String,
    /// Items (metric windows, events) refused, or 0 when the whole report was (too large).
    pub items: usize,
}

/// What became of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored, save what the refusal names.
    Stored(Option<Refusal>),
    /// Not stored (the agent will resend).
    Failed,
}

pub struct Job {
    pub org: OrgId,
    pub cluster: ClusterId,
    pub report: Report,
    pub done: oneshot::Sender<Outcome>,
    /// The agent stream's span: the batch that stores the report links to it (a batch holds
    /// many streams' reports, so it is no one stream's child).
    pub from: tracing::Span,
}

impl Job {
    /// Whether the report is an agent's final result of a command.
    fn finishes_command(&self) -> bool {
        matches!(&self.report, Report::CommandResult { state, .. } if store::commands::is_final(state))
    }
}

/// The quotas the writers check (against the database).
#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    pub series: u32,
}

type Refusals = Arc<Mutex<HashMap<(ClusterId, &'static str), Noted>>>;

/// How often the times agents were last heard from are written.
const SEEN_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Ingest {
    shards: Arc<Vec<mpsc::Sender<Job>>>,
    /// Clusters heard from since the last flush, with the latest time.
    seen: Arc<Mutex<HashMap<ClusterId, Seen>>>,
    /// Refusals since the last flush, per cluster and reason.
    refused: Refusals,
    metrics: Arc<Metrics>,
    /// Notified when an agent's final command result is stored here: the rollouts job waits on
    /// it. Not told across replicas: a NOTIFY in every ingest transaction serializes their
    /// commits on PostgreSQL (measured: steps waited seconds); elsewhere the job's tick remains.
    pub commands_finished: Arc<Notify>,
}

impl Ingest {
    pub fn start(db: Db, clock: Arc<Clock>, metrics: Arc<Metrics>, shards: usize, batch_max: usize, quotas: Quotas) -> Ingest {
        let refused = Refusals::default();
        let commands_finished = Arc::new(Notify::new());
        let senders = (0..shards.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(batch_max.max(1) * 4);
                let written = Written { metrics: metrics.clone(), refused: refused.clone(), commands_finished: commands_finished.clone() };
                tokio::spawn(writer(db.clone(), clock.clone(), written, rx, batch_max.max(1), quotas));
                tx
            })
            .collect();
        let seen = Arc::new(Mutex::new(HashMap::new()));
        tokio::spawn(flush_seen(db, seen.clone(), refused.clone()));
        Ingest { shards: Arc::new(senders), seen, refused, metrics, commands_finished }
    }

    /// Counts a refusal in `/metrics` and (written within `SEEN_EVERY`) in the cluster's
    /// findings. `count`: messages, connections or items refused.
    pub fn refused(&self, org: OrgId, cluster: ClusterId, reason: &'static str, count: usize, at: i64) {
        note(&self.metrics, &self.refused, org, cluster, reason, count, at);
    }
}

/// Counts a refusal where it is decided (not when the agent is told, which a broken stream
/// may never do).
fn note(metrics: &Metrics, refused: &Refusals, org: OrgId, cluster: ClusterId, reason: &'static str, count: usize, at: i64) {
    metrics.gateway_refused.with_label_values(&[reason]).inc_by(count as u64);
    let mut map = refused.lock().expect("refused lock poisoned");
    let n = map.entry((cluster, reason)).or_insert(Noted { org, cluster, reason, first_at: at, last_at: at, refused: 0 });
    n.last_at = n.last_at.max(at);
    n.refused += count as u64;
}

impl Ingest {
    /// Notes that the cluster's agent was heard from at `at`, and how far its clock was from
    /// ours if the message told (written within `SEEN_EVERY`).
    pub fn seen(&self, cluster: ClusterId, at: i64, clock_skew: Option<i64>) {
        merge_seen(&mut self.seen.lock().expect("seen lock poisoned"), cluster, Seen { at, clock_skew });
    }

    /// Queues a report; waits when the writers are behind (backpressure to the agent's stream).
    pub async fn submit(&self, job: Job) -> Result<(), Job> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        job.cluster.hash(&mut h);
        let shard = &self.shards[(h.finish() as usize) % self.shards.len()];
        shard.send(job).await.map_err(|e| e.0)
    }
}

/// Where a writer tells what it stored.
struct Written {
    metrics: Arc<Metrics>,
    refused: Refusals,
    commands_finished: Arc<Notify>,
}

async fn writer(db: Db, clock: Arc<Clock>, written: Written, mut rx: mpsc::Receiver<Job>, batch_max: usize, quotas: Quotas) {
    let metrics = &written.metrics;
    let mut batch = Vec::with_capacity(batch_max);
    // This shard's clusters' series seen in the database (a cluster always maps to one shard).
    let mut known = Known::default();
    while rx.recv_many(&mut batch, batch_max).await > 0 {
        let now = clock.now_ms();
        metrics.ingest_batch_size.observe(batch.len() as f64);
        known.expire();
        let span = tracing::info_span!(target: crate::telemetry::TRACES, "ingest batch", reports = batch.len());
        // Disabled without a collector: then the links are not worth reading.
        if !span.is_disabled() {
            for job in &batch {
                span.add_link(job.from.context().span().span_context().clone());
            }
        }
        match write(&db, &batch, now, quotas, &mut known).instrument(span).await {
            Ok(refusals) => written.finish(now, batch.drain(..).zip(refusals.into_iter().map(Outcome::Stored))),
            Err(e) if batch.len() > 1 => {
                // One bad report (say, for a cluster deleted a moment ago) must not fail its
                // neighbours: store them one by one.
                tracing::warn!(error = %e, size = batch.len(), "ingest batch failed; retrying reports one at a time");
                for job in batch.drain(..) {
                    let outcome = match write(&db, std::slice::from_ref(&job), now, quotas, &mut known).await {
                        Ok(mut refusals) => Outcome::Stored(refusals.pop().flatten()),
                        Err(e) => {
                            tracing::warn!(error = %e, cluster_id = %job.cluster, "report not stored");
                            Outcome::Failed
                        }
                    };
                    written.finish(now, std::iter::once((job, outcome)));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "report not stored");
                written.finish(now, batch.drain(..).map(|job| (job, Outcome::Failed)));
            }
        }
    }
}

/// Writes the noted last-seen times once a second in one statement per ~100 clusters, instead
/// of an UPDATE of `clusters` in every report's transaction. A crash loses at most a second of
/// them, which only makes an agent look silent a second longer.
/// Keeps the latest time, and the latest skew told.
fn merge_seen(seen: &mut HashMap<ClusterId, Seen>, cluster: ClusterId, new: Seen) {
    let old = seen.entry(cluster).or_insert(new);
    *old = Seen { at: old.at.max(new.at), clock_skew: new.clock_skew.or(old.clock_skew) };
}

async fn flush_seen(db: Db, seen: Arc<Mutex<HashMap<ClusterId, Seen>>>, refused: Refusals) {
    let mut tick = tokio::time::interval(SEEN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        flush_refused(&db, &refused).await;
        let mut batch: Vec<(ClusterId, Seen)> = std::mem::take(&mut *seen.lock().expect("seen lock poisoned")).into_iter().collect();
        if batch.is_empty() {
            continue;
        }
        // One order for every writer of these rows: no deadlock with another replica's flush.
        batch.sort_unstable();
        let written = async {
            let mut conn = db.pool.acquire().await?;
            store::agents::touch_each(&mut conn, &batch).await
        };
        if let Err(e) = written.await {
            tracing::warn!(error = %e, clusters = batch.len(), "recording when agents were last seen failed; retrying");
            let mut seen = seen.lock().expect("seen lock poisoned");
            for (cluster, was) in batch {
                // Noted since: newer, so it wins.
                let newer = seen.remove(&cluster);
                merge_seen(&mut seen, cluster, was);
                if let Some(newer) = newer {
                    merge_seen(&mut seen, cluster, newer);
                }
            }
        }
    }
}

/// Writes the noted refusals into the clusters' findings; on failure keeps them for the next
/// tick (a lost finding would hide refused data from the tenant).
async fn flush_refused(db: &Db, refused: &Refusals) {
    let mut noted: Vec<Noted> = std::mem::take(&mut *refused.lock().expect("refused lock poisoned")).into_values().collect();
    if noted.is_empty() {
        return;
    }
    noted.sort_unstable_by_key(|n| (n.cluster, n.reason));
    let written = async {
        let mut conn = db.pool.acquire().await?;
        store::throttles::record(&mut conn, &noted).await
    };
    if let Err(e) = written.await {
        tracing::warn!(error = %e, "recording refused reports failed; retrying");
        let mut map = refused.lock().expect("refused lock poisoned");
        for n in noted {
            let m = map.entry((n.cluster, n.reason)).or_insert(Noted { refused: 0, ..n.clone() });
            (m.first_at, m.last_at) = (m.first_at.min(n.first_at), m.last_at.max(n.last_at));
            m.refused += n.refused;
        }
    }
}

impl Written {
    fn finish(&self, now: i64, jobs: impl Iterator<Item = (Job, Outcome)>) {
        let mut finished_command = false;
        for (job, outcome) in jobs {
            if let Outcome::Stored(r) = &outcome {
                if let Some(r) = r {
                    note(&self.metrics, &self.refused, job.org, job.cluster, r.reason, r.items.max(1), now);
                }
                finished_command |= job.finishes_command();
            }
            let label = if outcome == Outcome::Failed { "failed" } else { "stored" };
            self.metrics.gateway_reports.with_label_values(&[job.report.kind(), label]).inc();
            let _ = job.done.send(outcome);
        }
        if finished_command {
            self.commands_finished.notify_one();
        }
    }
}

/// Stores the jobs in one transaction: inventory changes in arrival order, metrics (one raw
/// row per report, without the windows of series over the cluster's quota), events and
/// command results as multi-row statements (a statement per result made a batch of a
/// 1,000-cluster rollout's results commit seconds after it started on PostgreSQL). Returns
/// each job's refusal, if any; once committed, `known` learns the series the transaction
/// found or registered.
async fn write(db: &Db, jobs: &[Job], now: i64, quotas: Quotas, known: &mut Known) -> Result<Vec<Option<Refusal>>, sqlx::Error> {
    let mut tx = db.begin().await?;
    let mut admitted: Vec<(OrgId, ClusterId, Cow<[Window]>)> = Vec::new();
    let mut learned = Vec::new();
    let mut refusals = Vec::with_capacity(jobs.len());
    let mut events = Vec::new();
    let mut results = Vec::new();
    for job in jobs {
        let mut refusal = None;
        let (org, cluster) = (job.org, job.cluster);
        match &job.report {
            Report::Snapshot { facts, pods } => store::inventory::replace(&mut tx, org, cluster, facts, pods, now).await?,
            Report::Delta { upserted, removed, facts } => {
                store::inventory::remove_pods(&mut tx, cluster, removed).await?;
                store::inventory::upsert_pods(&mut tx, org, cluster, upserted, now).await?;
                if let Some(facts) = facts {
                    store::inventory::set_facts(&mut tx, org, cluster, facts, now).await?;
                }
            }
            Report::Metrics(w) => {
                let Admitted { kept, refused: over, learned: series } =
                    store::metric_series::admit(&mut tx, org, cluster, w, quotas.series, now, known).await?;
                if !series.is_empty() {
                    learned.push((cluster, series));
                }
                if over > 0 {
                    let message = format!("{over} windows of workloads beyond the cluster's quota of {} series", quotas.series);
                    refusal = Some(Refusal { reason: "series", message, items: over });
                }
                admitted.push((org, cluster, kept));
            }
            Report::Events(e) => events.extend(e.iter().map(|e| (org, cluster, e.clone()))),
            Report::CommandResult { id, state, progress, message, output } => {
                let outcome = store::commands::Outcome { state, progress: *progress, message, output: output.as_ref() };
                results.push(store::commands::Reported { cluster, id: *id, outcome });
            }
        }
        refusals.push(refusal);
    }
    let reports: Vec<(OrgId, ClusterId, &[Window])> = admitted.iter().map(|(o, c, w)| (*o, *c, w.as_ref())).collect();
    store::metric_reports::append(&mut tx, &reports).await?;
    store::rollups::add_events(&mut tx, &events).await?;
    store::commands::record_results(&mut tx, &results, now).await?;
    tx.commit().await?;
    for (cluster, series) in learned {
        known.learn(cluster, series);
    }
    Ok(refusals)
}
