//! Dashboard benchmark: with 5,000 connected clusters (inventory and half an hour of golden
//! metrics each), server time for the fleet overview and a cluster page, p50/p99 next to
//! /healthz measured in the same run; and, where Chromium is installed, the time from
//! navigation to the fleet table being visible.
//!
//! cargo bench -p meshfleet-server --bench dashboard
//! (MESHFLEET_TEST_POSTGRES_URL=postgres://... adds PostgreSQL; MESHFLEET_BENCH_CLUSTERS sets the fleet size)

use std::time::{Duration, Instant};

use meshfleet_server::config::Config;
use meshfleet_server::domain::{ClusterId, OrgId};
use meshfleet_server::secrets::Sealer;
use meshfleet_server::store::{self, clusters::Cluster, inventory, rollups::Window};
use meshfleet_server::Server;
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery staple";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Sequential requests for `secs`; returns (requests/s, p50, p99).
async fn measure(http: &reqwest::Client, url: &str, cookie: &str, secs: u64) -> (f64, Duration, Duration) {
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        let t = Instant::now();
        let resp = http.get(url).header("cookie", cookie).send().await.unwrap();
        assert!(resp.status().is_success(), "{url}: {}", resp.status());
        resp.bytes().await.unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    (times.len() as f64 / start.elapsed().as_secs_f64(), percentile(&times, 0.5), percentile(&times, 0.99))
}

async fn seed(state: &meshfleet_server::AppState, org: OrgId, n: usize) -> ClusterId {
    let now = state.clock.now_ms();
    let mut tx = state.db.begin().await.unwrap();
    let mut first = None;
    let mut windows = Vec::new();
    for i in 0..n {
        let id = ClusterId::new();
        first.get_or_insert(id);
        let cluster = Cluster {
            id,
            org_id: org,
            name: format!("cluster-{i:05}"),
            labels: [("env".to_string(), if i % 3 == 0 { "prod" } else { "dev" }.to_string())].into(),
            status: "connected".into(),
            created_at: now,
            updated_at: now,
            last_seen_at: Some(now),
            agent_version: Some("0.1.0".into()),
            kubernetes_version: Some("v1.33.1".into()),
        };
        store::clusters::insert(&mut tx, &cluster).await.unwrap();
        let facts = inventory::Facts {
            kubernetes_version: "v1.33.1".into(),
            node_count: 5,
            control_plane: inventory::ControlPlane { version: "0.1.0".into(), replicas: 1, ready_replicas: 1, components: vec![] },
            namespaces: vec!["shop".into()],
            certificates: vec![inventory::CertificateInfo { role: "issuer".into(), not_after: now + (i as i64 % 30 + 1) * 86_400_000, ..Default::default() }],
            pods_without_proxy: vec![],
        };
        let pods: Vec<inventory::Pod> = (0..10)
            .map(|p| inventory::Pod {
                namespace: "shop".into(),
                name: format!("web-{p}"),
                workload: "Deployment/web".into(),
                proxy_version: if p == 0 { "0.0.9" } else { "0.1.0" }.into(),
                ready: true,
                restarts: 0,
                phase: "Running".into(),
                ..Default::default()
            })
            .collect();
        inventory::replace(&mut tx, org, id, &facts, &pods, now).await.unwrap();
        for w in ["Deployment/web", "Deployment/api"] {
            for m in 0..30 {
                let start = (now / 60_000 - m) * 60_000;
                windows.push(Window {
                    org_id: org,
                    cluster_id: id,
                    namespace: "shop".into(),
                    workload: w.into(),
                    start,
                    end: start + 60_000,
                    requests: 600 + (i as i64 % 50),
                    failures: (i as i64 % 7),
                    p50_ms: 2.0,
                    p95_ms: 9.0,
                    p99_ms: 20.0 + (i % 13) as f64,
                });
            }
        }
        if windows.len() >= 2000 {
            store::rollups::add_windows(&mut tx, &windows).await.unwrap();
            windows.clear();
        }
    }
    store::rollups::add_windows(&mut tx, &windows).await.unwrap();
    tx.commit().await.unwrap();
    first.unwrap()
}

async fn run(engine: &str, url: String, n: usize, secs: u64) {
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        ("MESHFLEET_LISTEN".to_string(), "127.0.0.1:0".to_string()),
        ("MESHFLEET_GATEWAY_LISTEN".into(), "127.0.0.1:0".into()),
        ("MESHFLEET_DATABASE_URL".into(), url),
        ("MESHFLEET_DATA_DIR".into(), dir.path().display().to_string()),
        ("MESHFLEET_SEALING_KEY".into(), Sealer::generate_key()),
        ("MESHFLEET_LOG".into(), "warn".into()),
    ];
    let server = Server::start(Config::load(None, &env, &[]).unwrap()).await.unwrap();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    http.post(format!("{base}/api/v1/signup"))
        .json(&json!({ "email": "bench@example.com", "password": PASSWORD, "organization": "Bench" }))
        .send()
        .await
        .unwrap();
    let login: Value = http
        .post(format!("{base}/api/v1/login"))
        .json(&json!({ "email": "bench@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let org: OrgId = login["organization_id"].as_str().unwrap().parse().unwrap();
    let started = Instant::now();
    let cluster = seed(&server.state, org, n).await;
    println!("[{engine}] seeded {n} clusters (10 pods, 2 workloads x 30 minutes of metrics each) in {:.1?}", started.elapsed());
    let resp = http.post(format!("{base}/ui/session")).json(&json!({ "email": "bench@example.com", "password": PASSWORD })).send().await.unwrap();
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();

    let healthz = measure(&http, &format!("{base}/healthz"), &cookie, secs).await;
    let fleet = measure(&http, &format!("{base}/fleet"), &cookie, secs).await;
    let detail = measure(&http, &format!("{base}/clusters/{cluster}"), &cookie, secs).await;
    println!("[{engine}] {:<24} {:>9} {:>10} {:>10}", "endpoint", "req/s", "p50", "p99");
    for (name, (rps, p50, p99)) in [("/healthz (baseline)", healthz), ("/fleet (overview)", fleet), ("/clusters/{id} (detail)", detail)] {
        println!("[{engine}] {name:<24} {rps:>9.1} {:>10.2?} {:>10.2?}", p50, p99);
    }
    let verdict = if fleet.2 < Duration::from_millis(100) { "PASS" } else { "FAIL" };
    println!("[{engine}] goal: overview p99 < 100 ms server-side: {verdict} ({:.1?})", fleet.2);
    if engine == "sqlite" {
        browser_time(&base).await;
    }
    server.stop().await.unwrap();
}

/// Navigation to the fleet table being visible, in headless Chromium (WebDriver).
async fn browser_time(base: &str) {
    let (chromium, driver) = ("/usr/bin/chromium", "/usr/bin/chromedriver");
    if !std::path::Path::new(driver).exists() {
        println!("browser: skipped (install chromium and chromium-driver)");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = std::process::Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let profile = tempfile::tempdir().unwrap();
    let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({ "goog:chromeOptions": { "binary": chromium,
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 format!("--user-data-dir={}", profile.path().display())] } }))
    .unwrap();
    let client = fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    client.goto(&format!("{base}/login")).await.unwrap();
    client.find(fantoccini::Locator::Css("#email")).await.unwrap().send_keys("bench@example.com").await.unwrap();
    client.find(fantoccini::Locator::Css("#password")).await.unwrap().send_keys(PASSWORD).await.unwrap();
    client.find(fantoccini::Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
    client.wait().for_element(fantoccini::Locator::Css("table.fleet")).await.unwrap();
    let mut times = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        client.goto(&format!("{base}/fleet")).await.unwrap();
        client.wait().for_element(fantoccini::Locator::Css("table.fleet tbody tr")).await.unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    let verdict = if percentile(&times, 1.0) < Duration::from_secs(1) { "PASS" } else { "FAIL" };
    println!(
        "browser: navigation to visible fleet table, 7 runs: median {:.0?}, worst {:.0?}; goal < 1 s: {verdict}",
        percentile(&times, 0.5),
        percentile(&times, 1.0)
    );
    let _ = client.close().await;
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("MESHFLEET_BENCH_CLUSTERS").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let secs: u64 = std::env::var("MESHFLEET_BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    println!(
        "dashboard benchmark: {n} clusters; server and load generator share this machine ({} cores)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let dir = tempfile::tempdir().unwrap();
    run("sqlite", meshfleet_server::db::sqlite_url_in(dir.path()).unwrap(), n, secs).await;
    if let Some(admin) = std::env::var("MESHFLEET_TEST_POSTGRES_URL").ok().filter(|u| !u.is_empty()) {
        sqlx::any::install_default_drivers();
        let name = format!("meshfleet_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin).to_owned();
        run("postgres", format!("{base}/{name}"), n, secs).await;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await.unwrap();
    }
}
