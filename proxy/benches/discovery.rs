//! Discovery benchmark: 100 Services of 10 endpoints each (1,000) in the fake API server, the
//! real controller mirroring it, and a real proxy following all 100 through `--outbound`
//! listeners. Per sample, an endpoint appears in one Service (a new EndpointSlice, written to
//! the API server) and the clock runs until the proxy routes a request to it: its other
//! endpoints refuse connections, so the first 200 means the new one is in the proxy's set. The
//! baseline, in the same run, is a kube-rs watcher in this process seeing the same write.
//! Prints both p50/p99 and the controller's and proxy's RSS.
//!
//! Run: `cargo bench -p meshfleet-mesh --bench discovery`.
//! Knobs: DISCOVERY_BENCH_SERVICES (100), DISCOVERY_BENCH_ENDPOINTS (10 per Service),
//! DISCOVERY_BENCH_SAMPLES (300).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{watcher, WatchStreamExt};
use meshfleet_fake_kube::FakeKube;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;

mod support;
use support::*;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// A plain HTTP server answering 200 on 127.0.0.1:0.
async fn probe_app() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async { Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok")))) });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tcp), svc).await;
            });
        }
    });
    port
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not, and must not run this.
    if !std::env::args().any(|a| a == "--bench") {
        println!("discovery benchmark skipped: run it with `cargo bench -p meshfleet-mesh --bench discovery`");
        return;
    }
    let (services, per, samples) = (knob("DISCOVERY_BENCH_SERVICES", 100), knob("DISCOVERY_BENCH_ENDPOINTS", 10), knob("DISCOVERY_BENCH_SAMPLES", 300));
    assert!(services <= 250 && per <= 250, "pod IPs are 127.200.<service>.<endpoint>");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_pki(d);

    // The cluster: Services without selectors, their pods (nothing listens on their IPs, so a
    // connection to one is refused at once) and one slice each; a probe pod per Service too.
    let kube = FakeKube::start().await.unwrap();
    let probe_port = probe_app().await;
    for s in 0..services {
        let svc = format!("svc-{s}");
        kube.apply(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": svc, "namespace": NS}, "spec": {"ports": [{"name": "http", "port": 80}]}}),
        )
        .unwrap();
        let eps: Vec<(String, String)> = (0..per).map(|e| (format!("{svc}-{e}"), format!("127.200.{s}.{}", e + 1))).collect();
        for (name, ip) in &eps {
            kube.apply(pod(name, ip)).unwrap();
        }
        kube.apply(pod(&format!("{svc}-probe"), "127.0.0.1")).unwrap();
        kube.apply(slice(&svc, &svc, 8080, &eps)).unwrap();
    }
    let kubeconfig = d.join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig, &kube.admin_token).unwrap();

    // The baseline: when a watcher in this process sees each probe slice.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch = {
        let (seen, client) = (seen.clone(), kube.client().await.unwrap());
        tokio::spawn(async move {
            let stream = watcher(kube::Api::<EndpointSlice>::namespaced(client, NS), watcher::Config::default()).applied_objects();
            tokio::pin!(stream);
            while let Some(Ok(s)) = stream.next().await {
                let name = s.metadata.name.unwrap_or_default();
                if name.ends_with("-probe") {
                    seen.lock().unwrap().entry(name).or_insert_with(Instant::now);
                }
            }
        })
    };

    let mut args = controller_args(d);
    args.push("--discovery".into());
    let controller = spawn_env(env!("CARGO_BIN_EXE_meshfleet-controller"), &args, &[("KUBECONFIG", kubeconfig.to_str().unwrap())]);
    let grpc = wait_file(&d.join("controller.ready"))["grpc"].as_str().unwrap().to_string();
    let p = |n: &str| d.join(n).display().to_string();
    let mut args = vec![
        "--admin-addr=127.0.0.1:0".into(),
        "--inbound-addr=127.0.0.1:0".into(),
        format!("--controller-addr={grpc}"),
        format!("--destination={grpc}"),
        format!("--trust-anchors={}", p("bundle.crt")),
        format!("--token-file={}", p("a")),
        format!("--ready-file={}", p("proxy.ready")),
    ];
    args.extend((0..services).map(|s| format!("--outbound=127.0.0.1:0=svc-{s}.{NS}.svc.cluster.local:80")));
    let proxy = spawn_env(env!("CARGO_BIN_EXE_meshfleet-proxy"), &args, &[("RUST_LOG", "warn")]);
    let addrs = wait_file(&d.join("proxy.ready"));
    wait_ready(addrs["admin"].as_str().unwrap()).await;
    let outbound: Vec<String> = (0..services).map(|s| format!("http://{}/", addrs["outbound"][s].as_str().unwrap())).collect();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    // Every destination answered once (502: its endpoints all refuse) before the clock runs.
    for url in &outbound {
        assert_eq!(client.get(url).send().await.unwrap().status(), 502);
    }

    let (mut watch_us, mut proxy_us) = (Vec::new(), Vec::new());
    for i in 0..samples {
        let s = i % services;
        let (svc, name) = (format!("svc-{s}"), format!("svc-{s}-probe"));
        seen.lock().unwrap().remove(&name);
        let t0 = Instant::now();
        kube.apply(slice(&name, &svc, probe_port, &[(name.clone(), "127.0.0.1".into())])).unwrap();
        loop {
            if client.get(&outbound[s]).send().await.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "the proxy never routed to {name}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        proxy_us.push(t0.elapsed().as_micros() as u64);
        let watched = loop {
            if let Some(t) = seen.lock().unwrap().get(&name) {
                break *t;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        watch_us.push(watched.duration_since(t0).as_micros() as u64);
        // Gone again before this Service's next sample.
        kube.delete("discovery.k8s.io/v1", "EndpointSlice", NS, &name).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watch.abort();
    watch_us.sort_unstable();
    proxy_us.sort_unstable();
    let (controller_rss, proxy_rss) = (usage(controller.0.id()).1, usage(proxy.0.id()).1);

    println!("\n{services} Services x {per} endpoints ({} endpoints), {samples} samples, one proxy following every Service\n", services * per);
    println!("| from the API write to | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|");
    println!("| a kube-rs watcher's event (baseline) | {:.1} | {:.1} | {:.1} |", pct(&watch_us, 0.5), pct(&watch_us, 0.99), pct(&watch_us, 1.0));
    println!("| the proxy routing to the new endpoint | {:.1} | {:.1} | {:.1} |", pct(&proxy_us, 0.5), pct(&proxy_us, 0.99), pct(&proxy_us, 1.0));
    println!("\ncontroller RSS {:.1} MiB, proxy RSS {:.1} MiB", controller_rss as f64 / 1024.0, proxy_rss as f64 / 1024.0);
}
