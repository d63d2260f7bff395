//! What the mesh's benches share: a PKI written to a directory, the real binaries spawned
//! (killed on drop), their ready files, per-process CPU and RSS from /proc, and percentiles.
// Each bench uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshfleet_pki::mint::{self, CaMaterial, CaProfile};
use serde_json::{json, Value};

pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_file(path: &Path) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(t) = std::fs::read_to_string(path) {
            return serde_json::from_str(&t).unwrap();
        }
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn spawn(bin: &str, args: &[String]) -> Proc {
    spawn_env(bin, args, &[])
}

pub fn spawn_env(bin: &str, args: &[String], envs: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(bin);
    cmd.args(args).envs(envs.iter().copied()).stdout(Stdio::null()).stderr(Stdio::null());
    Proc(cmd.spawn().unwrap_or_else(|e| panic!("{bin}: {e}")))
}

/// (user+system CPU seconds, RSS KiB) of a process, from /proc.
pub fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0);
    (ticks / 100.0, rss)
}

/// The `p` quantile of sorted microseconds, in milliseconds.
pub fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

/// An anchor and issuer written to `dir` (bundle.crt, issuer.crt, issuer.key), with file tokens
/// "a" (bench/client) and "b" (bench/server) in tokens.json.
pub fn write_pki(dir: &Path) -> (CaMaterial, CaMaterial) {
    let year = Duration::from_secs(365 * 86400);
    let anchor = mint::new_anchor(&CaProfile::new("bench anchor", year)).unwrap();
    let issuer = mint::new_issuer(&anchor, &CaProfile::new("bench issuer", year)).unwrap();
    std::fs::write(dir.join("bundle.crt"), &anchor.cert_pem).unwrap();
    std::fs::write(dir.join("issuer.crt"), &issuer.cert_pem).unwrap();
    std::fs::write(dir.join("issuer.key"), &issuer.key_pem).unwrap();
    std::fs::write(
        dir.join("tokens.json"),
        r#"{"tokens":{"a":{"namespace":"bench","serviceAccount":"client"},"b":{"namespace":"bench","serviceAccount":"server"}}}"#,
    )
    .unwrap();
    std::fs::write(dir.join("a"), "a").unwrap();
    std::fs::write(dir.join("b"), "b").unwrap();
    (anchor, issuer)
}

/// The controller's flags for the files `write_pki` wrote.
pub fn controller_args(dir: &Path) -> Vec<String> {
    let p = |n: &str| dir.join(n).display().to_string();
    vec![
        "--grpc-addr=127.0.0.1:0".into(),
        "--admin-addr=127.0.0.1:0".into(),
        "--verifier=file".into(),
        format!("--tokens-file={}", p("tokens.json")),
        format!("--issuer-cert={}", p("issuer.crt")),
        format!("--issuer-key={}", p("issuer.key")),
        format!("--trust-bundle={}", p("bundle.crt")),
        format!("--ready-file={}", p("controller.ready")),
    ]
}

/// Polls a proxy's /ready (it holds a certificate) until 200.
pub async fn wait_ready(admin: &str) {
    let url = format!("http://{admin}/ready");
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(&url).await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(Instant::now() < deadline, "proxy at {admin} never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The namespace of the benches' workloads in the fake API server.
pub const NS: &str = "bench";

/// A ready pod of namespace `NS` at `ip`, with service account `server`.
pub fn pod(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
        "spec": {"serviceAccountName": "server", "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}})
}

/// A slice of Service `svc` (written by hand, as for a Service without a selector, so the fake's
/// EndpointSlice controller leaves it alone) with `(pod, ip)` endpoints on `port`.
pub fn slice(name: &str, svc: &str, port: u16, endpoints: &[(String, String)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(pod, ip)| json!({"addresses": [ip], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "namespace": NS, "name": pod}}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": name, "namespace": NS, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": port}], "endpoints": endpoints})
}
