//! Mesh benchmark: HTTP/1.1, 1 KiB request and response bodies, 16 keep-alive connections, open
//! loop at 1,000 and 2,000 req/s; the same traffic direct, through a meshfleet-proxy pair (mTLS),
//! through the same pair with the client proxy's route resolved by the controller's discovery
//! (`Resolve`, from a Service in the fake API server) instead of written as a flag, and through
//! an HAProxy pair doing the same mTLS hop, interleaved in one run. Prints added
//! p50/p99 over direct, each proxy's RSS, and CPU per 1,000 req/s.
//!
//! Run: `cargo bench -p meshfleet-mesh --bench mesh` (needs `haproxy` on PATH; Debian package).
//! `MESH_BENCH_SECS` sets the measured seconds per scenario (default 10).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use meshfleet_pki::mint::{self, CaMaterial, LeafProfile};
use meshfleet_pki::spiffe::WorkloadId;
use tokio::net::{TcpListener, TcpStream};

mod support;
use support::*;

const CONNS: usize = 16;
const BODY: usize = 1024;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let body = Bytes::from(vec![b'r'; BODY]);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let _ = tcp.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    addr
}

/// Open-loop load: each connection sends on a fixed schedule (a request that falls behind is sent
/// at once, not skipped). Latency counts from the moment the request is sent: tokio's timer has
/// 1 ms granularity, and counting from the schedule would add that jitter to every path alike.
async fn load(target: SocketAddr, rate: u64, secs: f64) -> (Vec<u64>, usize) {
    let per_conn = Duration::from_secs_f64(CONNS as f64 / rate as f64);
    let n = (secs * rate as f64 / CONNS as f64) as usize;
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for c in 0..CONNS {
        tasks.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(target).await.unwrap();
            let _ = tcp.set_nodelay(true);
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
            tokio::spawn(conn);
            let offset = per_conn.mul_f64(c as f64 / CONNS as f64);
            let (mut lat, mut errors) = (Vec::with_capacity(n), 0);
            for i in 0..n {
                let at = start + offset + per_conn * i as u32;
                tokio::time::sleep_until(at).await;
                let sent = tokio::time::Instant::now();
                let req = hyper::Request::post("/").header("host", "app").body(Full::new(Bytes::from(vec![b'q'; BODY]))).unwrap();
                let ok = match send.send_request(req).await {
                    Ok(resp) => resp.status() == 200 && resp.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    lat.push(sent.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    all.sort_unstable();
    (all, errors)
}

fn haproxy_pair(dir: &Path, app: SocketAddr, issuer: &CaMaterial, anchor: &CaMaterial) -> (Vec<Proc>, SocketAddr) {
    let signer = issuer.signer().unwrap();
    for (name, sa) in [("a", "client"), ("b", "server")] {
        let key = mint::new_key().unwrap();
        let id = WorkloadId::new("cluster.local", "bench", sa).unwrap();
        let leaf = mint::issue_leaf(&signer, &key, &LeafProfile::workload(&id, std::time::SystemTime::now() + Duration::from_secs(86400))).unwrap();
        let pem = format!("{}{}{}", leaf.pem(), issuer.cert_pem, key.serialize_pem());
        std::fs::write(dir.join(format!("haproxy-{name}.pem")), pem).unwrap();
    }
    std::fs::write(dir.join("haproxy-ca.pem"), &anchor.cert_pem).unwrap();
    let (pa, pb) = (free_port(), free_port());
    let d = dir.display();
    let global = "global\n  nbthread 1\n  maxconn 4096\n  ssl-default-bind-options ssl-min-ver TLSv1.3\n  ssl-default-server-options ssl-min-ver TLSv1.3\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n";
    let a = format!("{global}frontend out\n  bind 127.0.0.1:{pa}\n  default_backend peer\nbackend peer\n  http-reuse always\n  server b 127.0.0.1:{pb} ssl crt {d}/haproxy-a.pem ca-file {d}/haproxy-ca.pem verify required\n");
    let b = format!("{global}frontend in\n  bind 127.0.0.1:{pb} ssl crt {d}/haproxy-b.pem ca-file {d}/haproxy-ca.pem verify required\n  default_backend app\nbackend app\n  http-reuse always\n  server app {app}\n");
    std::fs::write(dir.join("haproxy-a.cfg"), a).unwrap();
    std::fs::write(dir.join("haproxy-b.cfg"), b).unwrap();
    let procs = ["a", "b"].iter().map(|n| spawn("haproxy", &["-db".into(), "-f".into(), format!("{d}/haproxy-{n}.cfg")])).collect();
    (procs, format!("127.0.0.1:{pa}").parse().unwrap())
}

struct Row {
    rate: u64,
    name: &'static str,
    p50: f64,
    p99: f64,
    errors: usize,
    cpu: Vec<f64>,
    rss: Vec<u64>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not, and must not run this.
    if !std::env::args().any(|a| a == "--bench") {
        println!("mesh benchmark skipped: run it with `cargo bench -p meshfleet-mesh --bench mesh`");
        return;
    }
    let secs: f64 = std::env::var("MESH_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (anchor, issuer) = write_pki(d);
    let p = |n: &str| d.join(n).display().to_string();

    let app = backend().await;
    // Discovery's cluster: Service `server` whose one endpoint is proxy b's inbound, on a meshed
    // pod (the injector's label) of service account `server`. Its slice is written once b listens.
    let kube = meshfleet_fake_kube::FakeKube::start().await.unwrap();
    let mut server_pod = pod("server-0", "127.0.0.1");
    server_pod["metadata"]["labels"]["meshfleet.io/proxy-version"] = serde_json::json!("bench");
    kube.apply(server_pod).unwrap();
    kube.apply(serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "server", "namespace": NS}, "spec": {"ports": [{"name": "http", "port": 80}]}}))
        .unwrap();
    let kubeconfig = d.join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig, &kube.admin_token).unwrap();
    let mut args = controller_args(d);
    args.push("--discovery".into());
    let _controller = spawn_env(env!("CARGO_BIN_EXE_meshfleet-controller"), &args, &[("KUBECONFIG", kubeconfig.to_str().unwrap())]);
    let grpc = wait_file(&d.join("controller.ready"))["grpc"].as_str().unwrap().to_string();
    let proxy = |token: &str, extra: Vec<String>| {
        let mut args = vec![
            "--admin-addr=127.0.0.1:0".into(),
            "--inbound-addr=127.0.0.1:0".into(),
            format!("--inbound-forward={app}"),
            format!("--controller-addr={grpc}"),
            format!("--trust-anchors={}", p("bundle.crt")),
            format!("--token-file={}", p(token)),
            format!("--ready-file={}", p(&format!("{token}.ready"))),
        ];
        args.extend(extra);
        // MESH_BENCH_PROXY_ARGS: extra flags for both proxies, e.g. "--worker-threads=2".
        args.extend(std::env::var("MESH_BENCH_PROXY_ARGS").unwrap_or_default().split_whitespace().map(String::from));
        let proc = spawn(env!("CARGO_BIN_EXE_meshfleet-proxy"), &args);
        (proc, wait_file(&d.join(format!("{token}.ready"))))
    };
    let (proxy_b, b_addrs) = proxy("b", vec![]);
    let b_in = b_addrs["inbound"].as_str().unwrap().to_string();
    let b_port: u16 = b_in.rsplit_once(':').unwrap().1.parse().unwrap();
    kube.apply(slice("server", "server", b_port, &[("server-0".into(), "127.0.0.1".into())])).unwrap();
    let (proxy_a, a_addrs) = proxy(
        "a",
        vec![
            format!("--outbound=127.0.0.1:0={b_in}#spiffe://cluster.local/ns/bench/sa/server"),
            format!("--destination={grpc}"),
            format!("--outbound=127.0.0.1:0=server.{NS}.svc.cluster.local:80"),
        ],
    );
    let mesh: SocketAddr = a_addrs["outbound"][0].as_str().unwrap().parse().unwrap();
    let discovered: SocketAddr = a_addrs["outbound"][1].as_str().unwrap().parse().unwrap();
    for admin in [&a_addrs["admin"], &b_addrs["admin"]] {
        wait_ready(admin.as_str().unwrap()).await;
    }
    let (haproxies, hap) = haproxy_pair(d, app, &issuer, &anchor);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let targets: [(&'static str, SocketAddr, Vec<u32>); 4] = [
        ("direct", app, vec![]),
        ("meshfleet-proxy pair", mesh, vec![proxy_a.0.id(), proxy_b.0.id()]),
        ("meshfleet-proxy pair, discovery", discovered, vec![proxy_a.0.id(), proxy_b.0.id()]),
        ("haproxy pair", hap, haproxies.iter().map(|h| h.0.id()).collect()),
    ];
    let mut rows = Vec::new();
    for rate in [1000u64, 2000] {
        for (name, addr, pids) in &targets {
            load(*addr, rate, 1.0).await; // warm-up: connections, TLS sessions, allocator
            let before: Vec<(f64, u64)> = pids.iter().map(|p| usage(*p)).collect();
            let t0 = Instant::now();
            let (lat, errors) = load(*addr, rate, secs).await;
            let wall = t0.elapsed().as_secs_f64();
            let after: Vec<(f64, u64)> = pids.iter().map(|p| usage(*p)).collect();
            let cpu = before.iter().zip(&after).map(|(b, a)| (a.0 - b.0) / wall / (rate as f64 / 1000.0)).collect();
            let rss = after.iter().map(|a| a.1).collect();
            rows.push(Row { rate, name, p50: pct(&lat, 0.5), p99: pct(&lat, 0.99), errors, cpu, rss });
            eprintln!("{rate} req/s {name}: p50 {:.3} ms p99 {:.3} ms errors {errors}", pct(&lat, 0.5), pct(&lat, 0.99));
        }
    }

    println!("\n{CONNS} connections, HTTP/1.1, {BODY} B bodies, {secs} s per scenario, open loop\n");
    println!("| rate | path | p50 ms | p99 ms | added p50 ms | added p99 ms | errors | CPU (cores) per 1k req/s, each proxy | RSS MiB, each proxy |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let base = rows.iter().find(|x| x.rate == r.rate && x.name == "direct").unwrap();
        let cpu = r.cpu.iter().map(|c| format!("{c:.3}")).collect::<Vec<_>>().join(" / ");
        let rss = r.rss.iter().map(|k| format!("{:.1}", *k as f64 / 1024.0)).collect::<Vec<_>>().join(" / ");
        println!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} |",
            r.rate,
            r.name,
            r.p50,
            r.p99,
            r.p50 - base.p50,
            r.p99 - base.p99,
            r.errors,
            if cpu.is_empty() { "-".into() } else { cpu },
            if rss.is_empty() { "-".into() } else { rss },
        );
    }
}
