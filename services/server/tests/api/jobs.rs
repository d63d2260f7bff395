//! Background jobs (`meshfleet_server::jobs`): a leased job runs on one replica at a time and
//! moves to another when its holder dies; every job stops when the server stops.

use std::time::{Duration, Instant};

use meshfleet_server::db::Db;
use meshfleet_server::store::leases;
use meshfleet_server::Server;

use crate::helpers::{postgres_url, test_config, Engine, TestDb};
use crate::on_both_engines;
use crate::process::server;

on_both_engines!(a_lease_has_one_holder_until_it_expires, a_stopped_server_leaves_no_job_running);

async fn a_lease_has_one_holder_until_it_expires(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = Db::connect(&db.url, 2).await.unwrap();
    let mut conn = store.pool.acquire().await.unwrap();
    let now = 1_700_000_000_000;
    assert!(leases::take(&mut conn, "rollups", "a", now, now + 15_000).await.unwrap(), "a free lease is taken");
    assert!(!leases::take(&mut conn, "rollups", "b", now + 1_000, now + 16_000).await.unwrap(), "a held lease is refused");
    assert!(leases::take(&mut conn, "retention", "b", now, now + 15_000).await.unwrap(), "leases are per job");
    assert!(leases::take(&mut conn, "rollups", "a", now + 5_000, now + 20_000).await.unwrap(), "the holder renews");
    assert!(!leases::take(&mut conn, "rollups", "b", now + 19_000, now + 34_000).await.unwrap(), "renewal pushed the expiry");
    assert!(leases::take(&mut conn, "rollups", "b", now + 21_000, now + 36_000).await.unwrap(), "an expired lease is taken over");
    assert!(!leases::take(&mut conn, "rollups", "a", now + 22_000, now + 37_000).await.unwrap(), "the old holder lost it");
    assert_eq!(leases::holder(&mut conn, "rollups").await.unwrap().as_deref(), Some("b"));
    leases::release(&mut conn, "rollups", "a").await.unwrap();
    assert_eq!(leases::holder(&mut conn, "rollups").await.unwrap().as_deref(), Some("b"), "only the holder releases");
    leases::release(&mut conn, "rollups", "b").await.unwrap();
    assert!(leases::take(&mut conn, "rollups", "a", now + 23_000, now + 38_000).await.unwrap(), "a released lease is free");
}

async fn a_stopped_server_leaves_no_job_running(engine: Engine) {
    let db = TestDb::new(engine).await;
    let server = Server::start(test_config(&db)).await.expect("server starts");
    let running = server.running_jobs();
    let mut expected = vec![
        "alert-delivery",
        "alert-evaluation",
        "anchor-rotation",
        "certificate-recheck",
        "command-expiry",
        "command-poll",
        "fleet-overview",
        "issuer-rotation",
        "retention",
        "rollouts",
        "rollups",
        "upgrade-proposals",
    ];
    if engine == Engine::Postgres {
        expected.push("notifications");
        expected.sort();
    }
    assert_eq!(running.names(), expected);
    // A guard against a hang, not a latency goal: on a loaded machine the lease releases may
    // wait for SQLite's write lock (seen to pass 5 s about once in five runs beside a build).
    tokio::time::timeout(Duration::from_secs(20), server.stop()).await.expect("the server stops within 20 s").unwrap();
    assert!(running.names().is_empty(), "jobs still running after stop: {:?}", running.names());
}

/// The value of a counter with these labels (in the exposition's order) on a replica's /metrics.
async fn counter(http: &reqwest::Client, base: &str, name: &str, labels: &str) -> u64 {
    let text = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let prefix = format!("meshfleet_{name}{{{labels}}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().parse().unwrap()).unwrap_or(0)
}

/// Two replicas on PostgreSQL: one holds the rollups lease and runs the job, the other waits;
/// killed without a chance to release it, the holder's lease expires and the other takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replica_takes_over_the_jobs_of_a_dead_lease_holder() {
    if postgres_url().is_none() {
        return;
    }
    const LEASE: Duration = Duration::from_secs(2);
    let db = TestDb::new(Engine::Postgres).await;
    let (a, b) = server().two_replicas(&db, &[("MESHFLEET_JOB_LEASE_MS", "2000"), ("MESHFLEET_JOB_LEASE_RENEW_MS", "500")]);
    let http = reqwest::Client::new();
    let acquired = |base: String| {
        let http = http.clone();
        async move { counter(&http, &base, "job_lease_changes_total", r#"change="acquired",job="rollups""#).await }
    };
    let runs = |base: String| {
        let http = http.clone();
        async move { counter(&http, &base, "job_runs_total", r#"job="rollups""#).await }
    };

    let start = Instant::now();
    let (mut holder, other) = loop {
        match (acquired(a.url()).await, acquired(b.url()).await) {
            (1, 0) => break (a, b),
            (0, 1) => break (b, a),
            (0, 0) if start.elapsed() < Duration::from_secs(5) => tokio::time::sleep(Duration::from_millis(50)).await,
            counts => panic!("the rollups lease should have one holder, acquisitions are {counts:?}"),
        }
    };
    // Renewals keep it: the other replica never runs the job.
    tokio::time::sleep(LEASE + Duration::from_millis(500)).await;
    assert_eq!(acquired(other.url()).await, 0, "the other replica took a lease that was being renewed");
    assert_eq!(runs(other.url()).await, 0);
    assert!(runs(holder.url()).await > 0, "the holder runs the job");

    holder.kill();
    let killed = Instant::now();
    while acquired(other.url()).await == 0 {
        assert!(killed.elapsed() < LEASE + Duration::from_secs(2), "no takeover within the lease time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = killed.elapsed();
    let before = runs(other.url()).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(runs(other.url()).await > before, "the new holder runs the job");
    eprintln!("rollups lease taken over {took:?} after its holder was killed (lease {LEASE:?})");
}

#[test]
fn a_lease_renewed_no_sooner_than_it_expires_is_refused() {
    let load = |lease: &str, renew: &str| {
        let env = vec![("MESHFLEET_JOB_LEASE_MS".to_string(), lease.to_string()), ("MESHFLEET_JOB_LEASE_RENEW_MS".to_string(), renew.to_string())];
        meshfleet_server::Config::load(None, &env, &[]).map(|c| (c.job_lease.as_millis(), c.job_lease_renew.as_millis())).map_err(|e| e.to_string())
    };
    assert_eq!(
        meshfleet_server::Config::load(None, &Vec::<(String, String)>::new(), &[]).map(|c| (c.job_lease.as_millis(), c.job_lease_renew.as_millis())).unwrap(),
        (15_000, 5_000)
    );
    assert_eq!(load("2000", "500").unwrap(), (2_000, 500));
    for (lease, renew) in [("2000", "2000"), ("2000", "0")] {
        let err = load(lease, renew).unwrap_err();
        assert!(err.contains("job_lease_renew_ms"), "{err}");
    }
}
