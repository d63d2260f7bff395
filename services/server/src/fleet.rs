//! The assessed fleet of each organization: every cluster with its status, health and
//! findings (by `domain::health`), versions, nearest certificate expiry and golden metrics,
//! worst first. The dashboard's overview and the health API read it from a per-organization
//! cache that the `fleet-overview` job keeps fresh.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::app::AppState;
use crate::domain::health::{self, Assessment, Certificate, Finding, Health, Signals, Uninjected};
use crate::domain::labels::Selector;
use crate::domain::{ClusterId, OrgId};
use crate::http::error::ApiError;
use crate::jobs::{Job, Scope};
use crate::store::clusters::{Cluster, ListQuery};
use crate::store::fleet::Golden;
use crate::store::{self};

/// Golden metrics of the overview and the health rules cover the last five minutes.
pub const RECENT_MS: i64 = 5 * 60_000;
const TREND_MS: i64 = 30 * 60_000;
/// Rows of the overview that get a request-rate trend ahead of time.
pub const TRENDED_ROWS: usize = 100;

pub struct Row {
    pub cluster: Cluster,
    pub status: String,
    pub health: Health,
    /// The findings, the one that decides the health first, each with when it began.
    pub findings: Vec<(Finding, i64)>,
    pub golden: Golden,
    pub mesh_version: String,
    pub nearest_expiry: Option<i64>,
    pub proxies: i64,
    pub outdated: i64,
}

/// The organization's fleet as assessed at `at` (ms).
pub struct Snapshot {
    pub at: i64,
    /// Every cluster with its health, worst first.
    pub rows: Vec<Row>,
    /// Request-rate trends of the first `TRENDED_ROWS` rows (none when assessed for alerts).
    pub trends: HashMap<ClusterId, Vec<(i64, f64)>>,
}

/// Requests per second per finished minute over the last half hour.
pub async fn rates(conn: &mut store::Conn, org: OrgId, ids: &[ClusterId], now: i64) -> Result<HashMap<ClusterId, Vec<(i64, f64)>>, ApiError> {
    let minutes = store::fleet::golden_by_minute_of(conn, org, ids, now - TREND_MS).await?;
    let finished = |ms: Vec<(i64, Golden)>| ms.into_iter().filter(|(m, _)| health::is_finished(*m, now)).map(|(m, g)| (m, g.requests as f64 / 60.0)).collect();
    Ok(minutes.into_iter().map(|(id, ms)| (id, finished(ms))).collect())
}

/// What the assessments of an organization carry to the next one (per replica: a live view
/// stays on one replica, so it never flips).
#[derive(Default, Clone)]
struct Memory {
    /// Clusters whose success rate counted as degraded: the hysteresis of the rules.
    degraded: HashSet<ClusterId>,
    /// When each finding (cluster, check, object) was first seen, for findings whose signals do
    /// not say when they began.
    first_seen: HashMap<(ClusterId, &'static str, String), i64>,
}

/// What to assess of a fleet.
#[derive(Clone, Copy, PartialEq)]
enum Extent {
    /// With the request-rate trends of the overview's first rows.
    Overview,
    /// The findings only, for alert evaluation: the trend query is one more read of the metrics
    /// (about 100 ms for 5,000 clusters on PostgreSQL; BENCHMARKS.md, "dashboard").
    Findings,
}

/// Reads the whole fleet, so it is cached per organization (see `FleetCache`).
async fn compute(state: &AppState, org: OrgId, extent: Extent) -> Result<Snapshot, ApiError> {
    let live = state.liveness();
    let thresholds = &state.config.health;
    let now = state.clock.now_ms();
    let mut conn = state.db.pool.acquire().await?;
    let everything = Selector::default();
    let clusters = store::clusters::list(&mut conn, org, &ListQuery { selector: &everything, status: None, after_name: None, limit: 100_000 }).await?;
    let golden = store::fleet::golden_since(&mut conn, org, now - RECENT_MS).await?;
    let facts = store::fleet::facts_of_org(&mut conn, org).await?;
    let versions = store::fleet::proxy_versions_of_org(&mut conn, org).await?;
    let skews = store::fleet::clock_skews_of_org(&mut conn, org).await?;
    drop(conn);
    let catalog = state.releases.get(&state.db, now).await?;
    let mut conn = state.db.pool.acquire().await?;
    let memory = state.fleet_cache.memory.lock().expect("fleet cache lock poisoned").get(&org).cloned().unwrap_or_default();
    let mut next = Memory::default();
    let mut rows: Vec<Row> = clusters
        .into_iter()
        .map(|cluster| {
            let g = golden.get(&cluster.id).copied().unwrap_or_default();
            let fact = facts.get(&cluster.id);
            let mesh_version = fact.map(|f| f.control_plane.version.clone()).unwrap_or_default();
            let certificates: Vec<Certificate> = fact
                .map(|f| f.certificates.iter().map(|c| Certificate { role: &c.role, not_before: c.not_before, not_after: c.not_after }).collect())
                .unwrap_or_default();
            let pods = versions.get(&cluster.id).map(Vec::as_slice).unwrap_or_default();
            let proxies = pods.iter().map(|(_, n)| n).sum();
            let outdated = pods.iter().filter(|(v, _)| !mesh_version.is_empty() && *v != mesh_version).map(|(_, n)| n).sum();
            let status = cluster.effective_status(&live).to_owned();
            let success_degraded = thresholds.success_degraded(g.success_rate(), memory.degraded.contains(&cluster.id));
            if success_degraded {
                next.degraded.insert(cluster.id);
            }
            let uninjected: Vec<Uninjected> = fact
                .map(|f| f.pods_without_proxy.iter().map(|u| Uninjected { namespace: &u.namespace, pods: u.pods, examples: &u.examples }).collect())
                .unwrap_or_default();
            let signals = Signals {
                status: &status,
                last_seen: cluster.last_seen_at,
                success_rate: g.success_rate(),
                success_degraded,
                certificates: &certificates,
                control_plane: fact.map(|f| (f.control_plane.ready_replicas, f.control_plane.replicas)),
                mesh_version: &mesh_version,
                proxies: (outdated, proxies),
                proxy_versions: pods,
                clock_skew: skews.get(&cluster.id).copied(),
                uninjected: &uninjected,
                release: catalog.support(&mesh_version),
                now,
            };
            let Assessment { health, findings } = health::assess(&signals, thresholds);
            let findings = findings
                .into_iter()
                .map(|f| {
                    let key = (cluster.id, f.check(), f.object());
                    let since = f.began().unwrap_or_else(|| memory.first_seen.get(&key).copied().unwrap_or(now));
                    next.first_seen.insert(key, since);
                    (f, since)
                })
                .collect();
            let nearest_expiry = certificates.iter().map(|c| c.not_after).min();
            Row { cluster, status, health, findings, golden: g, mesh_version, nearest_expiry, proxies, outdated }
        })
        .collect();
    state.fleet_cache.memory.lock().expect("fleet cache lock poisoned").insert(org, next);
    rows.sort_by(|a, b| a.health.cmp(&b.health).then_with(|| a.cluster.name.cmp(&b.cluster.name)));
    let trends = if extent == Extent::Overview {
        let first_page: Vec<ClusterId> = rows.iter().take(TRENDED_ROWS).filter(|r| r.golden.requests > 0).map(|r| r.cluster.id).collect();
        rates(&mut conn, org, &first_page, now).await?
    } else {
        HashMap::new()
    };
    Ok(Snapshot { at: now, rows, trends })
}

/// The assessed fleet of each organization, at most `FRESH` old when the refresh job keeps
/// up. A reader that finds it older gets it at once and marks it for the job
/// (stale-while-revalidate), so pages, live updates and the API stay fast however large the
/// fleet; changes show within ~2 s. Organizations nobody reads for `FORGET_AFTER` are dropped.
#[derive(Default)]
pub struct FleetCache {
    entries: Mutex<HashMap<OrgId, CacheEntry>>,
    /// Kept apart from the entries so that `invalidate` does not reset it.
    memory: Mutex<HashMap<OrgId, Memory>>,
}

struct CacheEntry {
    at: Instant,
    read: Instant,
    snapshot: Arc<Snapshot>,
    /// Read while stale: the refresh job recomputes it.
    wanted: bool,
}

const FRESH: Duration = Duration::from_secs(1);
const REFRESH_EVERY: Duration = Duration::from_millis(250);
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// The job that recomputes the snapshots read while stale (on every replica with the api role).
pub fn refresh_job() -> Job {
    Job::new("fleet-overview", REFRESH_EVERY, Scope::EveryReplica, refresh)
}

async fn refresh(state: AppState) -> anyhow::Result<()> {
    let wanted: Vec<OrgId> = {
        let mut entries = state.fleet_cache.entries.lock().expect("fleet cache lock poisoned");
        entries.retain(|_, e| e.read.elapsed() < FORGET_AFTER);
        entries.iter().filter(|(_, e)| e.wanted).map(|(org, _)| *org).collect()
    };
    let mut failed = None;
    for org in wanted {
        match compute(&state, org, Extent::Overview).await {
            Ok(fresh) => state.fleet_cache.put(org, Arc::new(fresh)),
            Err(e) => {
                // Served stale meanwhile; the next read marks it again.
                if let Some(entry) = state.fleet_cache.entries.lock().expect("fleet cache lock poisoned").get_mut(&org) {
                    entry.wanted = false;
                }
                failed = Some(anyhow::anyhow!("refreshing the fleet of organization {org}: {e}"));
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

impl FleetCache {
    /// Forgets an organization's rows, after a change the user expects to see at once.
    pub fn invalidate(&self, org: OrgId) {
        self.entries.lock().expect("fleet cache lock poisoned").remove(&org);
    }

    fn put(&self, org: OrgId, snapshot: Arc<Snapshot>) {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("fleet cache lock poisoned");
        let read = entries.get(&org).map_or(now, |e| e.read);
        entries.insert(org, CacheEntry { at: now, read, snapshot, wanted: false });
    }

    /// The organization's fleet assessed now, without trends, for alert evaluation, which must
    /// not act on a stale view.
    pub async fn fresh(state: &AppState, org: OrgId) -> Result<Snapshot, ApiError> {
        compute(state, org, Extent::Findings).await
    }

    /// The organization's assessed fleet.
    pub async fn snapshot(state: &AppState, org: OrgId) -> Result<Arc<Snapshot>, ApiError> {
        let cache = &state.fleet_cache;
        {
            let mut entries = cache.entries.lock().expect("fleet cache lock poisoned");
            if let Some(e) = entries.get_mut(&org) {
                e.read = Instant::now();
                if e.at.elapsed() >= FRESH {
                    e.wanted = true;
                }
                return Ok(e.snapshot.clone());
            }
        }
        let snapshot = Arc::new(compute(state, org, Extent::Overview).await?);
        cache.put(org, snapshot.clone());
        Ok(snapshot)
    }
}
