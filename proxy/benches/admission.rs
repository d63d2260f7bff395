//! Admission benchmark: N pods created one after another through the fake API server's HTTP API
//! (kube-rs), timed per create, first with a MutatingWebhookConfiguration pointing at a minimal
//! HTTPS AdmissionReview server started here (allowed, no patch: an admission that changes
//! nothing), then with the real controller's proxy injector as `install --dev-certs --injector`
//! configures it, for pods in a namespace annotated `meshfleet.io/inject: enabled`. Both
//! configurations are the same but for the Service and caBundle, so the difference is the
//! injector's own cost. Prints p50/p95/p99/max of both and the verdict against the goal:
//! injector p99 under 10 ms per pod, as its cost over the baseline's p99. A first phase with no
//! webhook at all shows what the fake API server and kube-rs take by themselves.
//!
//! Run: `cargo bench -p meshfleet-mesh --bench admission`. Knob: MESHFLEET_BENCH_PODS (500).
//! Without `--bench` (`cargo test --all-targets`) it runs a smoke version of 20 pods.

use std::convert::Infallible;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use meshfleet_fake_kube::FakeKube;
use meshfleet_mesh::controller::inject::{INJECT_ANNOTATION, PROXY_CONTAINER};
use meshfleet_mesh::controller::install::{INJECTOR_PORT, INJECTOR_SECRET};
use meshfleet_mesh::controller::webhook;
use meshfleet_pki::mint::{self, CaMaterial, LeafProfile, Usage};
use meshfleet_pki::names::{CONTROLLER_DEPLOYMENT, MESH_NAMESPACE};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;

mod support;
use support::*;

/// The baseline webhook's Service (routed to the server started here).
const BASELINE_SERVICE: (&str, &str, i32) = ("baseline-webhook", "bench", 443);
/// Creates per phase before the clock runs: connections, allocator, the namespace lookup path.
const WARMUP: usize = 20;
const GOAL_P99_MS: f64 = 10.0;

/// The manifest `meshfleet-controller install --dev-certs --injector` renders, as JSON values.
fn install_manifest() -> Vec<Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshfleet-controller")).args(["install", "--dev-certs", "--injector"]).output().unwrap();
    assert!(out.status.success(), "install: {}", String::from_utf8_lossy(&out.stderr));
    serde_yaml_ng::Deserializer::from_str(std::str::from_utf8(&out.stdout).unwrap()).map(|de| Value::deserialize(de).unwrap()).collect()
}

/// A serving certificate for the baseline Service's DNS name from the bench issuer, written to
/// `dir` (baseline.crt with its chain, baseline.key).
fn baseline_cert(dir: &Path, issuer: &CaMaterial) {
    let (name, namespace, _) = BASELINE_SERVICE;
    let key = mint::new_key().unwrap();
    let now = SystemTime::now();
    let profile = LeafProfile {
        common_name: String::new(),
        uris: Vec::new(),
        hosts: vec![format!("{name}.{namespace}.svc")],
        usage: Usage::Server,
        not_before: now - Duration::from_secs(300),
        not_after: now + Duration::from_secs(86400),
    };
    let leaf = mint::issue_leaf(&issuer.signer().unwrap(), &key, &profile).unwrap();
    std::fs::write(dir.join("baseline.crt"), format!("{}{}", leaf.pem(), issuer.cert_pem)).unwrap();
    std::fs::write(dir.join("baseline.key"), key.serialize_pem()).unwrap();
}

/// The AdmissionReview v1 answer that allows the request unchanged; None for a body that is no
/// review (answered 400).
fn allow(body: &[u8]) -> Option<Value> {
    let review: Value = serde_json::from_slice(body).ok()?;
    let uid = review.pointer("/request/uid")?.as_str()?;
    Some(json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {"uid": uid, "allowed": true}}))
}

/// The baseline webhook: HTTPS (the controller's own rustls setup) on 127.0.0.1:0, HTTP/1.1 or
/// HTTP/2, allowing everything.
async fn baseline_webhook(dir: &Path) -> std::net::SocketAddr {
    let tls = webhook::tls_config(&dir.join("baseline.crt"), &dir.join("baseline.key")).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let mut resp = match allow(&body) {
                        Some(review) => hyper::Response::new(Full::new(Bytes::from(review.to_string()))),
                        None => {
                            let mut r = hyper::Response::new(Full::new(Bytes::from_static(b"not an AdmissionReview")));
                            *r.status_mut() = hyper::StatusCode::BAD_REQUEST;
                            r
                        }
                    };
                    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, "application/json".parse().unwrap());
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    addr
}

/// Creates `warmup + n` pods in `namespace` one after another and returns the last `n` creates'
/// latencies (µs, sorted) and how many of them came back with the proxy injected. Each pod is
/// deleted again (untimed) so both phases see the same store.
async fn create_pods(client: &kube::Client, kube: &FakeKube, namespace: &str, warmup: usize, n: usize) -> (Vec<u64>, usize) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let (mut lat, mut injected) = (Vec::with_capacity(n), 0);
    for i in 0..warmup + n {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": format!("pod-{i}"), "labels": {"app": "bench"}},
            "spec": {"containers": [{"name": "app", "image": "bench/app:1"}]}}))
        .unwrap();
        let t0 = Instant::now();
        let created = pods.create(&PostParams::default(), &pod).await.unwrap();
        let us = t0.elapsed().as_micros() as u64;
        if i >= warmup {
            lat.push(us);
            let inits = created.spec.and_then(|s| s.init_containers).unwrap_or_default();
            injected += inits.iter().any(|c| c.name == PROXY_CONTAINER) as usize;
        }
        kube.delete("v1", "Pod", namespace, &format!("pod-{i}")).unwrap();
    }
    lat.sort_unstable();
    (lat, injected)
}

fn row(name: &str, lat: &[u64]) {
    println!("| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} |", lat.len(), pct(lat, 0.5), pct(lat, 0.95), pct(lat, 0.99), pct(lat, 1.0));
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not and gets a smoke run.
    let bench = std::env::args().any(|a| a == "--bench");
    let (n, warmup) = if bench { (std::env::var("MESHFLEET_BENCH_PODS").ok().and_then(|s| s.parse().ok()).unwrap_or(500), WARMUP) } else { (20, 2) };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (anchor, issuer) = write_pki(d);
    baseline_cert(d, &issuer);

    let kube = FakeKube::start().await.unwrap();
    let kubeconfig = d.join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig, &kube.admin_token).unwrap();
    let client = kube.client().await.unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for (name, annotations) in [("plain", json!({})), ("shop", json!({INJECT_ANNOTATION: "enabled"}))] {
        let ns = serde_json::from_value(json!({"metadata": {"name": name, "annotations": annotations}})).unwrap();
        namespaces.create(&PostParams::default(), &ns).await.unwrap();
    }

    // The injector: the manifest's webhook configuration and serving certificate, the real
    // controller serving it, its Service routed to it.
    let docs = install_manifest();
    let injector_config = docs.iter().find(|d| d["kind"] == "MutatingWebhookConfiguration").expect("the manifest's webhook configuration").clone();
    let secret = docs.iter().find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == INJECTOR_SECRET).expect("the injector's Secret");
    for (key, file) in [("tls.crt", "injector.crt"), ("tls.key", "injector.key")] {
        let pem = BASE64.decode(secret["data"][key].as_str().unwrap()).unwrap();
        std::fs::write(d.join(file), pem).unwrap();
    }
    let mut args = controller_args(d);
    args.extend([
        "--injector-addr=127.0.0.1:0".into(),
        format!("--injector-cert={}", d.join("injector.crt").display()),
        format!("--injector-key={}", d.join("injector.key").display()),
    ]);
    let controller = spawn_env(env!("CARGO_BIN_EXE_meshfleet-controller"), &args, &[("KUBECONFIG", kubeconfig.to_str().unwrap()), ("RUST_LOG", "warn")]);
    let injector_addr = wait_file(&d.join("controller.ready"))["injector"].as_str().expect("the controller serves the injector").parse().unwrap();
    kube.route_service(MESH_NAMESPACE, CONTROLLER_DEPLOYMENT, INJECTOR_PORT, injector_addr);

    // The baseline: the same configuration but for its name, Service and caBundle.
    let (svc, svc_ns, svc_port) = BASELINE_SERVICE;
    kube.route_service(svc_ns, svc, svc_port, baseline_webhook(d).await);
    let mut baseline_config = injector_config.clone();
    baseline_config["metadata"] = json!({"name": "bench-baseline"});
    let hook = &mut baseline_config["webhooks"][0];
    hook["name"] = json!("baseline.bench.meshfleet.io");
    hook["clientConfig"] = json!({"caBundle": BASE64.encode(&anchor.cert_pem),
        "service": {"name": svc, "namespace": svc_ns, "port": svc_port}});

    // Where the time goes without any webhook: the fake API server and kube-rs alone.
    let (none, _) = create_pods(&client, &kube, "plain", warmup, n).await;
    kube.apply(baseline_config).unwrap();
    let (base, base_injected) = create_pods(&client, &kube, "plain", warmup, n).await;
    kube.delete("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", "", "bench-baseline").unwrap();
    kube.apply(injector_config).unwrap();
    let cpu0 = usage(controller.0.id()).0;
    let (inj, injected) = create_pods(&client, &kube, "shop", warmup, n).await;
    let (cpu1, rss) = usage(controller.0.id());

    assert!(kube.webhook_fail_open().is_empty(), "webhook calls failed: {:?}", kube.webhook_fail_open());
    assert_eq!(base_injected, 0, "the baseline webhook changes nothing");
    assert_eq!(injected, n, "every pod in the injected namespace got the proxy");

    let (extra_p50, extra_p99) = (pct(&inj, 0.5) - pct(&base, 0.5), pct(&inj, 0.99) - pct(&base, 0.99));
    println!("\n{n} pod creates per webhook, sequential, kube-rs -> fake API server -> webhook over HTTPS ({warmup} warm-up creates each)\n");
    println!("| mutating webhook | pods | p50 ms | p95 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    row("none", &none);
    row("allow, no patch (baseline)", &base);
    row("meshfleet proxy injector", &inj);
    println!("\ninjector cost per pod: p50 {extra_p50:+.2} ms, p99 {extra_p99:+.2} ms over the baseline");
    println!("controller CPU {:.2} ms per injected pod, RSS {:.1} MiB", (cpu1 - cpu0) * 1000.0 / (warmup + n) as f64, rss as f64 / 1024.0);
    // The goal is the injector's own cost: what the API server and a do-nothing webhook take is
    // paid by any mutating webhook.
    let verdict = if extra_p99 < GOAL_P99_MS { "meets" } else { "misses" };
    println!("verdict: injector cost at p99 {extra_p99:.2} ms {verdict} the goal (under {GOAL_P99_MS} ms per pod){}", if bench { "" } else { " [smoke run]" });
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
}
