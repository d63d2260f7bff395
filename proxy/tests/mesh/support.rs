//! Test support: a PKI in a temp dir, the real controller and proxy binaries spawned on
//! 127.0.0.1 port 0 (addresses read from their ready files), an in-process echo app, a TCP tap,
//! a Prometheus text reader, and why a root-only test must skip. Processes are killed on drop;
//! logs show with TEST_LOG=1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use meshfleet_pki::mint::{self, CaMaterial, CaProfile};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const YEAR: Duration = Duration::from_secs(365 * 86400);

/// Why a test that needs root and these programs cannot run here, if it cannot.
pub fn root_skip_reason(tools: &[&str]) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)).unwrap_or("?");
    if uid != "0" {
        return Some(format!("not root (uid {uid})"));
    }
    for tool in tools {
        let found = Command::new(tool).arg(if *tool == "ip" { "-V" } else { "--version" }).output().is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("`{tool}` is not available"));
        }
    }
    None
}

/// Anchor + issuer + token files for one controller.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub anchor: CaMaterial,
}

impl Pki {
    pub fn new() -> Self {
        let anchor = mint::new_anchor(&CaProfile::new("test anchor", YEAR)).unwrap();
        let issuer = mint::new_issuer(&anchor, &CaProfile::new("test issuer 1", YEAR)).unwrap();
        let pki = Self { dir: tempfile::tempdir().unwrap(), anchor };
        pki.write_issuer(&issuer);
        pki.write_bundle(&[&pki.anchor]);
        std::fs::write(
            pki.path("tokens.json"),
            r#"{"tokens": {"tok-a": {"namespace": "web", "serviceAccount": "client"},
                           "tok-b": {"namespace": "api", "serviceAccount": "server"}}}"#,
        )
        .unwrap();
        std::fs::write(pki.path("tok-a"), "tok-a\n").unwrap();
        std::fs::write(pki.path("tok-b"), "tok-b\n").unwrap();
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces the issuer files the way Kubernetes updates a mounted Secret: each file by rename.
    pub fn write_issuer(&self, issuer: &CaMaterial) {
        atomic_write(&self.path("issuer.crt"), issuer.cert_pem.as_bytes());
        atomic_write(&self.path("issuer.key"), issuer.key_pem.as_bytes());
    }

    pub fn write_bundle(&self, anchors: &[&CaMaterial]) {
        let pem: String = anchors.iter().map(|a| a.cert_pem.clone()).collect();
        atomic_write(&self.path("bundle.crt"), pem.as_bytes());
    }
}

pub fn atomic_write(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("writing");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A spawned binary, killed on drop.
pub struct Process {
    pub child: Child,
    pub addrs: serde_json::Value,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    pub fn addr(&self, key: &str) -> SocketAddr {
        self.addrs[key].as_str().unwrap().parse().unwrap()
    }

    pub fn outbound(&self, i: usize) -> SocketAddr {
        self.addrs["outbound"][i].as_str().unwrap().parse().unwrap()
    }
}

pub fn spawn(bin: &str, args: &[String], envs: &[(&str, &Path)], ready: &Path) -> Process {
    let log = std::env::var_os("TEST_LOG").is_some();
    let mut cmd = Command::new(bin);
    cmd.args(args).envs(envs.iter().copied()).arg("--ready-file").arg(ready).stdout(Stdio::null());
    cmd.stderr(if log { Stdio::inherit() } else { Stdio::null() });
    cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
    let mut child = cmd.spawn().expect("spawn binary");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(ready) {
            let addrs = serde_json::from_str(&text).unwrap();
            return Process { child, addrs };
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{bin} exited early: {status}");
        }
        assert!(Instant::now() < deadline, "{bin} never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn spawn_controller(pki: &Pki, extra: &[&str]) -> Process {
    spawn_controller_with_env(pki, extra, &[])
}

/// A controller with extra environment, e.g. `KUBECONFIG` for the Kubernetes issuer source.
pub fn spawn_controller_with_env(pki: &Pki, extra: &[&str], envs: &[(&str, &Path)]) -> Process {
    let mut args: Vec<String> =
        ["--grpc-addr=127.0.0.1:0", "--admin-addr=127.0.0.1:0", "--verifier=file", "--reload-interval-ms=200"].iter().map(|s| s.to_string()).collect();
    for (flag, file) in [("--issuer-cert", "issuer.crt"), ("--issuer-key", "issuer.key"), ("--trust-bundle", "bundle.crt"), ("--tokens-file", "tokens.json")] {
        args.push(format!("{flag}={}", pki.path(file).display()));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let ready = pki.path(&format!("controller-{}.ready", rand_suffix()));
    spawn(env!("CARGO_BIN_EXE_meshfleet-controller"), &args, envs, &ready)
}

/// A proxy whose identity comes from `token` ("tok-a" -> web/client, "tok-b" -> api/server).
pub fn spawn_proxy(pki: &Pki, controller: &Process, token: &str, forward: SocketAddr, outbound: &[String], extra: &[&str]) -> Process {
    let mut args = vec![
        "--admin-addr=127.0.0.1:0".to_string(),
        format!("--inbound-forward={forward}"),
        format!("--controller-addr={}", controller.addr("grpc")),
        format!("--trust-anchors={}", pki.path("bundle.crt").display()),
        format!("--token-file={}", pki.path(token).display()),
        "--detect-timeout-ms=300".to_string(),
        "--drain-timeout-secs=2".to_string(),
    ];
    args.extend(outbound.iter().map(|r| format!("--outbound={r}")));
    // A pod's proxy listens on its pod IP; others on any free loopback port.
    if !extra.iter().any(|a| a.starts_with("--inbound-addr")) {
        args.push("--inbound-addr=127.0.0.1:0".to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let ready = pki.path(&format!("proxy-{}.ready", rand_suffix()));
    spawn(env!("CARGO_BIN_EXE_meshfleet-proxy"), &args, &[], &ready)
}

fn rand_suffix() -> u64 {
    rand::random()
}

/// A gRPC channel to the controller that trusts `anchor` and expects the controller's identity,
/// as a proxy's does.
pub fn controller_channel(controller: &Process, anchor: &CaMaterial) -> tonic::transport::Channel {
    let bundle = meshfleet_pki::verify::TrustBundle::from_pem(anchor.cert_pem.as_bytes()).unwrap();
    let tls = meshfleet_mesh::tls::client_config(&bundle, Some("spiffe://cluster.local/ns/meshfleet/sa/meshfleet-controller".into()), None, &[b"h2"]).unwrap();
    let tls = Arc::new(tls);
    meshfleet_mesh::identity::channel(&controller.addr("grpc").to_string(), Arc::new(move || tls.clone())).unwrap()
}

/// Polls /ready until 200.
pub async fn wait_ready(proxy: &Process) {
    let url = format!("http://{}/ready", proxy.addr("admin"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = reqwest::get(&url).await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "proxy never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP/1.1 app: `/status/N` answers N, `/sleep/MS` waits first; otherwise it echoes the
/// request body with 200.
pub async fn spawn_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let status = req.uri().path().strip_prefix("/status/").and_then(|s| s.parse::<u16>().ok()).unwrap_or(200);
                    if let Some(ms) = req.uri().path().strip_prefix("/sleep/").and_then(|s| s.parse().ok()) {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let mut resp = hyper::Response::new(Full::new(if body.is_empty() { Bytes::from_static(b"ok") } else { body }));
                    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tcp), svc).await;
            });
        }
    });
    addr
}

/// A TCP relay that records every byte in both directions.
pub async fn spawn_tap(target: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let Ok(server) = TcpStream::connect(target).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let (r1, r2) = (rec.clone(), rec.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    r1.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                let _ = sw.shutdown().await;
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    r2.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                let _ = cw.shutdown().await;
            });
        }
    });
    (addr, seen)
}

/// The Prometheus text a proxy or the controller serves on its admin port.
pub async fn metrics(proxy: &Process) -> String {
    reqwest::get(format!("http://{}/metrics", proxy.addr("admin"))).await.unwrap().text().await.unwrap()
}

/// Sum of every sample of `name` whose labels include all of `want`.
pub fn metric(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let ok = want.iter().all(|(k, v)| labels.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// A client that opens a new connection for every request, so each one handshakes afresh.
/// The status of a GET of `url` over a new connection.
pub async fn get_status(url: impl reqwest::IntoUrl) -> u16 {
    fresh_client().get(url).send().await.unwrap().status().as_u16()
}

pub fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(10)).build().unwrap()
}

/// Sends requests for `duration` from `workers` tasks; returns (ok, failures).
pub async fn drive(url: String, duration: Duration, keepalive: bool, workers: usize) -> (usize, Vec<String>) {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = if keepalive { reqwest::Client::new() } else { fresh_client() };
            let (mut ok, mut failed) = (0, Vec::new());
            while Instant::now() < deadline {
                match client.post(&url).body("ping").send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(format!("status {}", r.status())),
                    Err(e) => failed.push(format!("{e:?}")),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, failed)
        }));
    }
    let mut total = (0, Vec::new());
    for t in tasks {
        let (ok, failed) = t.await.unwrap();
        total.0 += ok;
        total.1.extend(failed);
    }
    total
}

/// Proxy A in front of `app`, whose only outbound route goes to proxy `b`'s inbound listener;
/// waits until both hold a certificate.
pub async fn client_proxy(pki: &Pki, controller: &Process, app: SocketAddr, b: &Process) -> Process {
    let route = format!("127.0.0.1:0={}", b.addr("inbound"));
    let a = spawn_proxy(pki, controller, "tok-a", app, &[route], &[]);
    wait_ready(&a).await;
    wait_ready(b).await;
    a
}

/// Controller + app + proxy A (client side, outbound to B) + proxy B (server side, inbound to app).
pub struct Mesh {
    pub pki: Pki,
    pub controller: Process,
    pub a: Process,
    pub b: Process,
    pub app: SocketAddr,
}

impl Mesh {
    pub async fn start(controller_args: &[&str]) -> Self {
        let pki = Pki::new();
        let controller = spawn_controller(&pki, controller_args);
        let app = spawn_app().await;
        let b = spawn_proxy(&pki, &controller, "tok-b", app, &[], &[]);
        let route = format!("127.0.0.1:0={}#spiffe://cluster.local/ns/api/sa/server", b.addr("inbound"));
        let a = spawn_proxy(&pki, &controller, "tok-a", "127.0.0.1:1".parse().unwrap(), &[route], &[]);
        wait_ready(&a).await;
        wait_ready(&b).await;
        Self { pki, controller, a, b, app }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.a.outbound(0))
    }
}
