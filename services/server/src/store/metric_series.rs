//! The distinct workloads (series) each cluster has reported metrics for, so the series quota
//! is checked against the database. Only the ingest writer adds series; retention forgets
//! series without rollups left. Each ingest writer remembers the series it has seen in the
//! database (`Known`), so a report of known series, the steady state, costs no query.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use sqlx::Row;

use super::rollups::Window;
use super::Conn;
use crate::domain::{ClusterId, OrgId};

/// How long a writer trusts what it learnt: retention may forget a series that went quiet,
/// and another replica may have registered series since.
const KNOWN_FOR: Duration = Duration::from_secs(300);

/// Series a writer has seen registered in the database, per cluster (namespace -> workloads).
/// Learnt only from committed transactions, and forgotten after `KNOWN_FOR`.
#[derive(Default)]
pub struct Known {
    clusters: HashMap<ClusterId, Learnt>,
    swept: Option<Instant>,
}

struct Learnt {
    at: Instant,
    series: HashMap<String, HashSet<String>>,
    count: usize,
}

impl Known {
    fn contains(&self, cluster: ClusterId, namespace: &str, workload: &str) -> bool {
        self.clusters.get(&cluster).and_then(|l| l.series.get(namespace)).is_some_and(|w| w.contains(workload))
    }

    /// Whether the cluster is known to have `quota` series already: its new series are refused
    /// without asking the database.
    fn full(&self, cluster: ClusterId, quota: u32) -> bool {
        self.clusters.get(&cluster).is_some_and(|l| l.count >= quota as usize)
    }

    /// Remembers series found or registered by a transaction that has committed.
    pub fn learn(&mut self, cluster: ClusterId, series: Vec<(String, String)>) {
        let l = self.clusters.entry(cluster).or_insert_with(|| Learnt { at: Instant::now(), series: HashMap::new(), count: 0 });
        for (ns, wl) in series {
            if l.series.entry(ns).or_default().insert(wl) {
                l.count += 1;
            }
        }
    }

    /// Forgets what was learnt more than `KNOWN_FOR` ago (looking at most once a second).
    pub fn expire(&mut self) {
        if self.swept.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            return;
        }
        self.swept = Some(Instant::now());
        self.clusters.retain(|_, l| l.at.elapsed() < KNOWN_FOR);
    }
}

/// What `admit` kept of a report.
pub struct Admitted<'a> {
    pub kept: Cow<'a, [Window]>,
    /// Windows refused: their series would exceed the quota.
    pub refused: usize,
    /// Series found in or added to the database: `Known::learn` them once committed.
    pub learned: Vec<(String, String)>,
}

impl<'a> Admitted<'a> {
    fn only(windows: &'a [Window], keep: impl Fn(&Window) -> bool, learned: Vec<(String, String)>) -> Self {
        let kept: Vec<Window> = windows.iter().filter(|w| keep(w)).cloned().collect();
        Admitted { refused: windows.len() - kept.len(), kept: Cow::Owned(kept), learned }
    }
}

/// Keeps the windows of series the cluster already has, and of new series while the cluster
/// stays within `quota` series (registering them). Call inside the transaction that stores
/// the windows.
#[tracing::instrument(target = "meshfleet_traces", name = "store.metric_series.admit", skip_all)]
pub async fn admit<'a>(
    conn: &mut Conn,
    org: OrgId,
    cluster: ClusterId,
    windows: &'a [Window],
    quota: u32,
    now: i64,
    cache: &Known,
) -> Result<Admitted<'a>, sqlx::Error> {
    if windows.iter().all(|w| cache.contains(cluster, &w.namespace, &w.workload)) {
        return Ok(Admitted { kept: Cow::Borrowed(windows), refused: 0, learned: Vec::new() });
    }
    if cache.full(cluster, quota) {
        return Ok(Admitted::only(windows, |w| cache.contains(cluster, &w.namespace, &w.workload), Vec::new()));
    }
    // No more than `quota` series of one report can ever be kept: that bounds the work.
    let all: BTreeSet<(&str, &str)> =
        windows.iter().filter(|w| !cache.contains(cluster, &w.namespace, &w.workload)).map(|w| (w.namespace.as_str(), w.workload.as_str())).collect();
    let wanted: Vec<(&str, &str)> = all.into_iter().take(quota as usize).collect();
    let mut known: BTreeSet<(&str, &str)> = BTreeSet::new();
    for chunk in wanted.chunks(super::rows_per_statement(conn, 2)) {
        let pairs = (0..chunk.len()).map(|i| format!("(${}, ${})", 2 * i + 2, 2 * i + 3)).collect::<Vec<_>>().join(", ");
        let sql = format!("SELECT namespace, workload FROM metric_series WHERE cluster_id = $1 AND (namespace, workload) IN (VALUES {pairs})");
        let mut q = sqlx::query(&sql).bind(cluster.to_string());
        for (ns, wl) in chunk {
            q = q.bind(*ns).bind(*wl);
        }
        for r in q.fetch_all(&mut *conn).await? {
            let (ns, wl): (String, String) = (r.try_get("namespace")?, r.try_get("workload")?);
            // Keep the borrowed key of `wanted`, which the found row equals.
            if let Some(k) = chunk.iter().find(|(n, w)| *n == ns && *w == wl) {
                known.insert(*k);
            }
        }
    }
    let new: Vec<(&str, &str)> = wanted.iter().filter(|k| !known.contains(*k)).copied().collect();
    if !new.is_empty() {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM metric_series WHERE cluster_id = $1").bind(cluster.to_string()).fetch_one(&mut *conn).await?;
        let room = usize::try_from(i64::from(quota) - count).unwrap_or(0);
        let admitted = &new[..new.len().min(room)];
        for chunk in admitted.chunks(super::rows_per_statement(conn, 5)) {
            let sql = format!(
                "INSERT INTO metric_series (cluster_id, org_id, namespace, workload, first_seen) VALUES {} ON CONFLICT DO NOTHING",
                super::values_clause(chunk.len(), 5)
            );
            let mut q = sqlx::query(&sql);
            for (ns, wl) in chunk {
                q = q.bind(cluster.to_string()).bind(org.to_string()).bind(*ns).bind(*wl).bind(now);
            }
            q.execute(&mut *conn).await?;
        }
        known.extend(admitted);
    }
    let learned = known.iter().map(|(ns, wl)| (ns.to_string(), wl.to_string())).collect();
    let keep = |w: &Window| known.contains(&(w.namespace.as_str(), w.workload.as_str())) || cache.contains(cluster, &w.namespace, &w.workload);
    Ok(Admitted::only(windows, keep, learned))
}

/// Forgets series first seen before `cutoff` that have no rollups left (retention removed them).
#[tracing::instrument(target = "meshfleet_traces", name = "store.metric_series.delete_unused", skip_all)]
pub async fn delete_unused(conn: &mut Conn, cutoff: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM metric_series WHERE first_seen < $1 AND NOT EXISTS (SELECT 1 FROM metric_rollups r
             WHERE r.cluster_id = metric_series.cluster_id AND r.namespace = metric_series.namespace AND r.workload = metric_series.workload)",
    )
    .bind(cutoff)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
