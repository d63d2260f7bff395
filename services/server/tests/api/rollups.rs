//! Metrics reports are stored raw on the acknowledged path and rolled up per minute later
//! (`store::metric_reports`): the rollups must come out exactly as folding each window in
//! turn would make them, however the reports are split over passes, and a crash between
//! storing a report and rolling it up must lose nothing and count nothing twice.

use meshfleet_server::db::Db;
use meshfleet_server::domain::{ClusterId, OrgId};
use meshfleet_server::store::agents::Seen;
use meshfleet_server::store::metric_reports::{self, Scope};
use meshfleet_server::store::rollups::{self, MinuteRollup, Window};
use meshfleet_server::store::{accounts, agents, clusters, fleet};
use sqlx::Connection;

use crate::helpers::{Engine, TestDb};
use crate::on_both_engines;

const MINUTE: i64 = 1_700_000_040_000; // a whole minute

on_both_engines!(rollup_passes_add_up_like_folding_each_window, a_crash_between_storing_and_rolling_up_loses_nothing, last_seen_times_never_move_backwards);

async fn cluster(conn: &mut sqlx::AnyConnection, org: OrgId, name: &str) -> ClusterId {
    let c = clusters::Cluster {
        id: ClusterId::new(),
        org_id: org,
        name: name.into(),
        labels: Default::default(),
        status: "connected".into(),
        created_at: MINUTE,
        updated_at: MINUTE,
        last_seen_at: Some(MINUTE),
        agent_version: None,
        kubernetes_version: None,
    };
    clusters::insert(conn, &c).await.unwrap();
    c.id
}

async fn setup(engine: Engine) -> (TestDb, Db, OrgId, ClusterId, ClusterId) {
    let test_db = TestDb::new(engine).await;
    let db = Db::connect(&test_db.url, 4).await.unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    let org = OrgId::new();
    accounts::create_org(&mut conn, org, "Acme", MINUTE).await.unwrap();
    let (a, b) = (cluster(&mut conn, org, "a").await, cluster(&mut conn, org, "b").await);
    (test_db, db, org, a, b)
}

fn window(org: OrgId, cluster: ClusterId, workload: &str, start: i64, requests: i64, p99: f64) -> Window {
    Window {
        org_id: org,
        cluster_id: cluster,
        namespace: "shop".into(),
        workload: workload.into(),
        start,
        end: start + 10_000,
        requests,
        failures: requests / 10,
        p50_ms: p99 / 5.0,
        p95_ms: p99 / 2.0,
        p99_ms: p99,
    }
}

/// Reports as an agent sends them: each a few workloads' windows; the third resends the
/// second (its ack was lost), and the last crosses into the next minute.
fn reports(org: OrgId, cluster: ClusterId) -> Vec<Vec<Window>> {
    let w = |workload: &str, offset: i64, requests: i64, p99: f64| window(org, cluster, workload, MINUTE + offset, requests, p99);
    vec![
        vec![w("Deployment/web", 0, 100, 8.0), w("Deployment/api", 0, 40, 30.0)],
        vec![w("Deployment/web", 10_000, 300, 12.0), w("Deployment/api", 10_000, 0, 1.0)],
        vec![w("Deployment/web", 10_000, 300, 12.0), w("Deployment/api", 10_000, 0, 1.0)],
        vec![w("Deployment/web", 20_000, 50, 100.0)],
        vec![w("Deployment/web", 60_000, 7, 3.0), w("Deployment/api", 50_000, 9, 2.0)],
    ]
}

async fn append(db: &Db, org: OrgId, cluster: ClusterId, reports: &[Vec<Window>]) {
    let mut tx = db.begin().await.unwrap();
    let rows: Vec<(OrgId, ClusterId, &[Window])> = reports.iter().map(|r| (org, cluster, r.as_slice())).collect();
    metric_reports::append(&mut tx, &rows).await.unwrap();
    tx.commit().await.unwrap();
}

/// What the metrics API shows, without the cluster (to compare two clusters).
async fn shown(db: &Db, org: OrgId, cluster: ClusterId) -> Vec<MinuteRollup> {
    let mut conn = db.pool.acquire().await.unwrap();
    rollups::minutes_since(&mut conn, org, cluster, 0).await.unwrap()
}

async fn pending_rows(db: &Db) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM metric_reports").fetch_one(&db.pool).await.unwrap()
}

async fn rollup_passes_add_up_like_folding_each_window(engine: Engine) {
    let (_test_db, db, org, a, b) = setup(engine).await;
    let mut conn = db.pool.acquire().await.unwrap();

    // Cluster a: the raw path, one report per pass for the first three, then the rest at once
    // (each pass reads back what the previous one wrote for the same minute).
    let ra = reports(org, a);
    for r in ra[..3].iter() {
        append(&db, org, a, std::slice::from_ref(r)).await;
        assert_eq!(metric_reports::roll_up(&mut conn, Scope::Oldest(100)).await.unwrap(), 1);
    }
    append(&db, org, a, &ra[3..]).await;
    assert_eq!(metric_reports::roll_up(&mut conn, Scope::Oldest(1)).await.unwrap(), 1, "a pass takes at most its limit");
    assert_eq!(pending_rows(&db).await, 1);

    // Cluster b, the oracle: the same windows folded one at a time by the per-window upsert.
    for r in reports(org, b) {
        for w in r {
            rollups::add_windows(&mut conn, std::slice::from_ref(&w)).await.unwrap();
        }
    }

    // The reader rolls up the last pending report itself.
    let got = shown(&db, org, a).await;
    assert_eq!(pending_rows(&db).await, 0, "reading rolled up the rest");
    assert_eq!(got, shown(&db, org, b).await);
    let web: Vec<(i64, i64)> = got.iter().filter(|m| m.workload == "Deployment/web").map(|m| (m.minute, m.requests)).collect();
    assert_eq!(web, vec![(MINUTE, 450), (MINUTE + 60_000, 7)], "the resent window counts once: {got:?}");
    let web0 = got.iter().find(|m| m.workload == "Deployment/web" && m.minute == MINUTE).unwrap();
    assert!((web0.latency_p99_ms - (8.0 * 100.0 + 12.0 * 300.0 + 100.0 * 50.0) / 450.0).abs() < 1e-9, "{web0:?}");

    // The fleet summaries see the same totals.
    let golden = fleet::golden_since(&mut conn, org, 0).await.unwrap();
    assert_eq!(golden[&a].requests, 450 + 7 + 40 + 9);
    assert_eq!(golden[&a], golden[&b]);
    assert_eq!(metric_reports::roll_up(&mut conn, Scope::Oldest(100)).await.unwrap(), 0, "nothing left to roll up");
}

async fn a_crash_between_storing_and_rolling_up_loses_nothing(engine: Engine) {
    let (test_db, db, org, a, _) = setup(engine).await;
    let ra = reports(org, a);
    append(&db, org, a, &ra[..2]).await;
    {
        let mut conn = db.pool.acquire().await.unwrap();
        metric_reports::roll_up(&mut conn, Scope::Oldest(100)).await.unwrap();
    }
    // Acknowledged (committed) but not rolled up when the process dies; and a rollup that
    // had taken them dies before committing.
    append(&db, org, a, &ra[2..]).await;
    {
        let mut conn = db.pool.acquire().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        sqlx::query("DELETE FROM metric_reports").execute(&mut *tx).await.unwrap();
        sqlx::query("UPDATE metric_rollups SET requests = requests + 1000").execute(&mut *tx).await.unwrap();
        drop(tx);
    }
    db.pool.close().await;

    // The restarted server sees every acknowledged window exactly once.
    let db = Db::connect(&test_db.url, 4).await.unwrap();
    assert_eq!(pending_rows(&db).await, 3);
    let mut conn = db.pool.acquire().await.unwrap();
    assert_eq!(metric_reports::roll_up(&mut conn, Scope::Oldest(100)).await.unwrap(), 3);
    let total: i64 = shown(&db, org, a).await.iter().map(|m| m.requests).sum();
    assert_eq!(total, 100 + 40 + 300 + 50 + 7 + 9);
    // Rolling up again (another replica's worker, a reader) changes nothing.
    assert_eq!(metric_reports::roll_up(&mut conn, Scope::Org(org)).await.unwrap(), 0);
    assert_eq!(shown(&db, org, a).await.iter().map(|m| m.requests).sum::<i64>(), total);
}

async fn last_seen_times_never_move_backwards(engine: Engine) {
    let (_test_db, db, org, a, b) = setup(engine).await;
    let mut conn = db.pool.acquire().await.unwrap();
    agents::touch_each(&mut conn, &[(a, Seen { at: MINUTE + 5_000, clock_skew: None }), (b, Seen { at: MINUTE - 5_000, clock_skew: None })]).await.unwrap();
    let seen = |id: ClusterId| {
        let db = db.clone();
        async move { clusters::get(&mut db.pool.acquire().await.unwrap(), org, id).await.unwrap().unwrap().last_seen_at }
    };
    assert_eq!(seen(a).await, Some(MINUTE + 5_000));
    assert_eq!(seen(b).await, Some(MINUTE), "an older time does not overwrite a newer one");
}
