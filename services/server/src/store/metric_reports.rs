//! Metrics reports on their way into `metric_rollups`. The gateway's acknowledged path only
//! appends one row per report (`append`); `roll_up` folds pending rows into the per-minute
//! rollups and deletes them in one transaction, so a report counts exactly once however the
//! server stops. Readers of metric_rollups roll up their scope first and so see every
//! acknowledged report; the worker rolls up everything each second to keep this table small.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::{Connection, Row};

use super::rollups::Window;
use super::{parse_col, values_clause, Conn};
use crate::domain::{ClusterId, OrgId};

/// Serializes rollup passes across replicas on PostgreSQL (any constant unique to this use).
const ROLLUP_LOCK: i64 = 0x6d65_7368_726f_6c6c;

/// One window as a report row stores it: a JSON array, without the ids the row carries.
#[derive(Serialize, Deserialize)]
struct Stored(String, String, i64, i64, i64, i64, f64, f64, f64);

fn encode(windows: &[Window]) -> String {
    let stored: Vec<Stored> =
        windows.iter().map(|w| Stored(w.namespace.clone(), w.workload.clone(), w.start, w.end, w.requests, w.failures, w.p50_ms, w.p95_ms, w.p99_ms)).collect();
    serde_json::to_string(&stored).expect("windows serialize")
}

fn decode(org_id: OrgId, cluster_id: ClusterId, json: &str) -> Result<Vec<Window>, serde_json::Error> {
    let stored: Vec<Stored> = serde_json::from_str(json)?;
    Ok(stored
        .into_iter()
        .map(|Stored(namespace, workload, start, end, requests, failures, p50_ms, p95_ms, p99_ms)| Window {
            org_id,
            cluster_id,
            namespace,
            workload,
            start,
            end,
            requests,
            failures,
            p50_ms,
            p95_ms,
            p99_ms,
        })
        .collect())
}

/// Appends one row per report (the windows of one Metrics report, all of one cluster), in
/// multi-row statements. Reports without windows store nothing.
#[tracing::instrument(target = "meshfleet_traces", name = "store.metric_reports.append", skip_all)]
pub async fn append(conn: &mut Conn, reports: &[(OrgId, ClusterId, &[Window])]) -> Result<(), sqlx::Error> {
    let reports: Vec<_> = reports.iter().filter(|(_, _, w)| !w.is_empty()).collect();
    for chunk in reports.chunks(super::rows_per_statement(conn, 3)) {
        let sql = format!("INSERT INTO metric_reports (org_id, cluster_id, windows) VALUES {}", values_clause(chunk.len(), 3));
        let mut q = sqlx::query(&sql);
        for (org, cluster, windows) in chunk {
            q = q.bind(org.to_string()).bind(cluster.to_string()).bind(encode(windows));
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Which pending reports a rollup pass takes.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    /// The oldest this many, of every organization (the background worker).
    Oldest(u32),
    /// Everything of one organization (before reading its rollups).
    Org(OrgId),
    /// Everything of one cluster (before reading its rollups).
    Cluster(OrgId, ClusterId),
}

impl Scope {
    fn filter(self) -> String {
        match self {
            Scope::Oldest(n) => format!("id IN (SELECT id FROM metric_reports ORDER BY id LIMIT {n})"),
            Scope::Org(_) => "org_id = $1".into(),
            Scope::Cluster(..) => "org_id = $1 AND cluster_id = $2".into(),
        }
    }

    fn bind<'q>(self, mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        match self {
            Scope::Oldest(_) => {}
            Scope::Org(org) => q = q.bind(org.to_string()),
            Scope::Cluster(org, cluster) => q = q.bind(org.to_string()).bind(cluster.to_string()),
        }
        q
    }
}

/// One minute of one workload, as metric_rollups holds it.
#[derive(Debug, Clone, PartialEq)]
struct Minute {
    org_id: OrgId,
    requests: i64,
    failures: i64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    last_window_end: i64,
    changed: bool,
}

type Key = (ClusterId, String, String, i64);

/// Folds one window into its minute, exactly as the per-window upsert of
/// `rollups::add_windows` does: a window ending no later than the minute's last one was
/// applied already (a resend) and changes nothing; percentiles are request-weighted means.
fn fold(minute: &mut Option<Minute>, w: &Window) {
    let Some(m) = minute else {
        *minute = Some(Minute {
            org_id: w.org_id,
            requests: w.requests,
            failures: w.failures,
            p50_ms: w.p50_ms,
            p95_ms: w.p95_ms,
            p99_ms: w.p99_ms,
            last_window_end: w.end,
            changed: true,
        });
        return;
    };
    if w.end <= m.last_window_end {
        return;
    }
    let total = m.requests + w.requests;
    let merge = |old: f64, new: f64| if total == 0 { new } else { (old * m.requests as f64 + new * w.requests as f64) / total as f64 };
    (m.p50_ms, m.p95_ms, m.p99_ms) = (merge(m.p50_ms, w.p50_ms), merge(m.p95_ms, w.p95_ms), merge(m.p99_ms, w.p99_ms));
    m.requests = total;
    m.failures += w.failures;
    m.last_window_end = w.end;
    m.changed = true;
}

/// True when the scope has reports waiting (a cheap indexed probe: readers call this on
/// every read, and usually the worker got there first).
async fn pending(conn: &mut Conn, scope: Scope) -> Result<bool, sqlx::Error> {
    let filter = match scope {
        Scope::Oldest(_) => "1 = 1".to_owned(),
        _ => scope.filter(),
    };
    let sql = format!("SELECT id FROM metric_reports WHERE {filter} LIMIT 1");
    Ok(scope.bind(sqlx::query(&sql)).fetch_optional(conn).await?.is_some())
}

/// Moves the scope's pending reports into metric_rollups: takes them (deleting them),
/// folds their windows in arrival order into the minutes they touch, and writes those
/// minutes back, all in one transaction. Returns how many reports it consumed.
#[tracing::instrument(target = "meshfleet_traces", name = "store.metric_reports.roll_up", skip_all)]
pub async fn roll_up(conn: &mut Conn, scope: Scope) -> Result<usize, sqlx::Error> {
    if !pending(conn, scope).await? {
        return Ok(0);
    }
    let sqlite = conn.backend_name() == "SQLite";
    let mut tx = if sqlite && !conn.is_in_transaction() {
        // Take the write lock up front: this transaction reads rollups, then writes them.
        conn.begin_with("BEGIN IMMEDIATE").await?
    } else {
        conn.begin().await?
    };
    if !sqlite {
        // One pass at a time across replicas: two passes reading the same minute and both
        // writing it back would lose one's windows. (Wrapped: the lock function returns void,
        // which the Any driver cannot decode.)
        sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS l").bind(ROLLUP_LOCK).execute(&mut *tx).await?;
    }
    let sql = format!("DELETE FROM metric_reports WHERE {} RETURNING id, org_id, cluster_id, windows", scope.filter());
    let rows = scope.bind(sqlx::query(&sql)).fetch_all(&mut *tx).await?;
    let mut reports = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: i64 = r.try_get("id")?;
        let org: OrgId = parse_col(&r.try_get::<String, _>("org_id")?, "metric_reports.org_id")?;
        let cluster: ClusterId = parse_col(&r.try_get::<String, _>("cluster_id")?, "metric_reports.cluster_id")?;
        match decode(org, cluster, &r.try_get::<String, _>("windows")?) {
            Ok(windows) => reports.push((id, windows)),
            // Nothing can ever read it: drop it rather than block every later pass.
            Err(e) => tracing::error!(error = %e, report = id, cluster = %cluster, "undecodable metrics report dropped"),
        }
    }
    // RETURNING order is unspecified; ids give each cluster's arrival order.
    reports.sort_unstable_by_key(|(id, _)| *id);

    let mut minutes: BTreeMap<Key, Option<Minute>> = BTreeMap::new();
    for (_, windows) in &reports {
        for w in windows {
            minutes.entry((w.cluster_id, w.namespace.clone(), w.workload.clone(), w.minute())).or_insert(None);
        }
    }
    load(&mut tx, &mut minutes).await?;
    for (_, windows) in &reports {
        for w in windows {
            let key = (w.cluster_id, w.namespace.clone(), w.workload.clone(), w.minute());
            fold(minutes.get_mut(&key).expect("every key was inserted above"), w);
        }
    }
    write_back(&mut tx, &minutes).await?;
    tx.commit().await?;
    Ok(rows.len())
}

/// Fills in the minutes that metric_rollups already holds.
async fn load(conn: &mut Conn, minutes: &mut BTreeMap<Key, Option<Minute>>) -> Result<(), sqlx::Error> {
    let keys: Vec<Key> = minutes.keys().cloned().collect();
    for chunk in keys.chunks(super::rows_per_statement(conn, 4)) {
        let sql = format!(
            "SELECT cluster_id, namespace, workload, minute, org_id, requests, failures, latency_p50_ms, latency_p95_ms, latency_p99_ms, last_window_end
             FROM metric_rollups WHERE (cluster_id, namespace, workload, minute) IN (VALUES {})",
            values_clause(chunk.len(), 4)
        );
        let mut q = sqlx::query(&sql);
        for (cluster, namespace, workload, minute) in chunk {
            q = q.bind(cluster.to_string()).bind(namespace).bind(workload).bind(*minute);
        }
        for r in q.fetch_all(&mut *conn).await? {
            let cluster = parse_col(&r.try_get::<String, _>("cluster_id")?, "metric_rollups.cluster_id")?;
            let key = (cluster, r.try_get("namespace")?, r.try_get("workload")?, r.try_get("minute")?);
            let minute = Minute {
                org_id: parse_col(&r.try_get::<String, _>("org_id")?, "metric_rollups.org_id")?,
                requests: r.try_get("requests")?,
                failures: r.try_get("failures")?,
                p50_ms: r.try_get("latency_p50_ms")?,
                p95_ms: r.try_get("latency_p95_ms")?,
                p99_ms: r.try_get("latency_p99_ms")?,
                last_window_end: r.try_get("last_window_end")?,
                changed: false,
            };
            if let Some(slot) = minutes.get_mut(&key) {
                *slot = Some(minute);
            }
        }
    }
    Ok(())
}

/// Writes back the minutes the pass changed (in key order, so concurrent writers of the
/// same rows, should there be any, lock them in one order).
async fn write_back(conn: &mut Conn, minutes: &BTreeMap<Key, Option<Minute>>) -> Result<(), sqlx::Error> {
    let changed: Vec<(&Key, &Minute)> = minutes.iter().filter_map(|(k, m)| m.as_ref().filter(|m| m.changed).map(|m| (k, m))).collect();
    for chunk in changed.chunks(super::rows_per_statement(conn, 11)) {
        let sql = format!(
            "INSERT INTO metric_rollups (cluster_id, org_id, namespace, workload, minute, requests, failures,
                 latency_p50_ms, latency_p95_ms, latency_p99_ms, last_window_end)
             VALUES {} ON CONFLICT (cluster_id, namespace, workload, minute) DO UPDATE SET
                 requests = excluded.requests, failures = excluded.failures, latency_p50_ms = excluded.latency_p50_ms,
                 latency_p95_ms = excluded.latency_p95_ms, latency_p99_ms = excluded.latency_p99_ms,
                 last_window_end = excluded.last_window_end",
            values_clause(chunk.len(), 11)
        );
        let mut q = sqlx::query(&sql);
        for ((cluster, namespace, workload, minute), m) in chunk {
            q = q
                .bind(cluster.to_string())
                .bind(m.org_id.to_string())
                .bind(namespace)
                .bind(workload)
                .bind(*minute)
                .bind(m.requests)
                .bind(m.failures)
                .bind(m.p50_ms)
                .bind(m.p95_ms)
                .bind(m.p99_ms)
                .bind(m.last_window_end);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(start: i64, requests: i64, p99: f64) -> Window {
        Window {
            org_id: OrgId::new(),
            cluster_id: ClusterId::new(),
            namespace: "shop".into(),
            workload: "Deployment/web".into(),
            start,
            end: start + 10_000,
            requests,
            failures: 1,
            p50_ms: p99 / 4.0,
            p95_ms: p99 / 2.0,
            p99_ms: p99,
        }
    }

    #[test]
    fn windows_survive_the_round_trip_through_a_report_row() {
        let w = vec![window(60_000, 10, 8.0), window(70_000, 0, 0.5)];
        assert_eq!(
            decode(w[0].org_id, w[0].cluster_id, &encode(&w)).unwrap(),
            vec![w[0].clone(), Window { org_id: w[0].org_id, cluster_id: w[0].cluster_id, ..w[1].clone() }]
        );
    }

    #[test]
    fn folding_sums_counts_weights_percentiles_and_skips_resends() {
        let mut m = None;
        fold(&mut m, &window(0, 100, 10.0));
        fold(&mut m, &window(10_000, 300, 30.0));
        // A resend of the first window (its ack was lost) changes nothing.
        fold(&mut m, &window(0, 100, 10.0));
        let m = m.unwrap();
        assert_eq!((m.requests, m.failures, m.last_window_end), (400, 2, 20_000));
        assert_eq!(m.p99_ms, (10.0 * 100.0 + 30.0 * 300.0) / 400.0);
        let mut idle = None;
        fold(&mut idle, &window(0, 0, 1.0));
        fold(&mut idle, &window(10_000, 0, 2.0));
        assert_eq!(idle.unwrap().p99_ms, 2.0, "with no requests the latest window's value stands");
    }
}
